"""Batch predictions through the Lambda: upload a CSV, wait for its output."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from mlops_lab import ops
from mlops_lab.aws import Aws
from mlops_lab.cli.render import console
from mlops_lab.settings import get_settings

app = typer.Typer()


@app.command()
def predict(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A CSV with the model's columns.")],
    key: Annotated[str | None, typer.Option(help="Object key in the input bucket (default: the file name).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the Lambda's output.")] = 300,
) -> None:
    """Upload a CSV to the input bucket, wait for the Lambda's predictions, download and summarise them."""
    predict_and_render(file, key, timeout)


def predict_and_render(file: Path, key: str | None, timeout: float) -> ops.BatchResult:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"Uploaded {file.name}; waiting for the Lambda's output...", total=None)
        result = ops.predict_file(
            get_settings(), Aws(), file, key=key, timeout=timeout, on_wait=lambda _: bar.update(task)
        )
    if result.status == "rejected":
        console.print(f"[red]Rejected[/]: {result.error['reason'] if result.error else ''} -> {result.output_uri}")
        raise typer.Exit(1)
    counts = ", ".join(f"{label}: {count:,}" for label, count in sorted((result.label_counts or {}).items()))
    console.print(
        f"[green]{result.rows:,} rows scored[/] in {result.seconds:.2f} s -> {result.output_uri}\n"
        f"  labels: {counts}\n  downloaded to {result.local_path}"
    )
    return result
