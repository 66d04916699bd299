"""Batch predictions through the Lambda: upload a CSV and wait for its output; list, redrive and reconcile what
did not complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from mlops_lab import jobs, recovery
from mlops_lab import reconcile as lab_reconcile
from mlops_lab.aws import Aws
from mlops_lab.cli import render
from mlops_lab.cli.render import console
from mlops_lab.errors import ExitCode, explain
from mlops_lab.settings import get_settings

app = typer.Typer()


@app.command()
def predict(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A CSV with the model's columns.")],
    key: Annotated[str | None, typer.Option(help="Object key in the input bucket (default: the file name).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the Lambda's output.")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (no progress).")] = False,
) -> None:
    """Upload a CSV to the input bucket, wait for the Lambda's predictions, download and summarise them.
    Exits 1 when the file is rejected (the reason is shown), 6 on a timeout, 9 when the function failed on it."""
    if as_json:
        predict_json(file, key, timeout)
        return
    aws = Aws()
    render.where(aws)
    predict_and_render(aws, file, key, timeout)


def predict_json(file: Path, key: str | None, timeout: float) -> None:
    try:
        aws = Aws()
        render.where(aws)
        result = jobs.predict_file(get_settings(), aws, file, key=key, timeout=timeout)
    except (jobs.PredictFailed, jobs.PredictTimeout) as problem:
        explained = explain(problem)
        print(json.dumps({"status": "failed", **explained.to_json()}, indent=2))
        raise typer.Exit(int(explained.code)) from None
    print(json.dumps(render.batch_result_json(result), indent=2))
    if result.status == "rejected":
        raise typer.Exit(ExitCode.REFUSED)


def predict_and_render(aws: Aws, file: Path, key: str | None, timeout: float) -> jobs.BatchResult:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"Uploaded {file.name}; waiting for the Lambda's output...", total=None)
        try:
            result = jobs.predict_file(
                get_settings(), aws, file, key=key, timeout=timeout, on_wait=lambda _: bar.update(task)
            )
        except (jobs.PredictFailed, jobs.PredictTimeout) as problem:
            bar.stop()
            console.print(f"[red]No predictions[/]: {problem}")
            console.print("The function's log: `mlops-lab logs function`.")
            raise typer.Exit(int(explain(problem).code)) from None
    if result.status == "rejected":
        console.print(f"[red]Rejected[/]: {result.error['reason'] if result.error else ''} -> {result.output_uri}")
        raise typer.Exit(ExitCode.REFUSED)
    if result.value_range is not None:
        summary = f"predictions from {result.value_range[0]:,.6g} to {result.value_range[1]:,.6g}"
    else:
        summary = "labels: " + ", ".join(
            f"{label}: {count:,}" for label, count in sorted((result.label_counts or {}).items())
        )
    scored_by = f" by {result.model}" if result.model else ""
    console.print(
        f"[green]{result.rows:,} rows scored[/]{scored_by} in {result.seconds:.2f} s -> {result.output_uri}\n"
        f"  {summary}\n  downloaded to {result.local_path}"
    )
    return result


@app.command()
def failures() -> None:
    """List the events the function failed on (the failure queue): input, error, attempts, when."""
    aws = Aws()
    render.where(aws)
    found = recovery.list_failures(get_settings(), aws)
    if not found:
        console.print("No failures: every event the function received completed.")
        return
    table = Table(title=f"{len(found)} failed event(s)")
    for column in ("when (UTC)", "input", "attempts", "error"):
        table.add_column(column, overflow="fold")
    for failure in found:
        table.add_row(
            failure.when.strftime("%Y-%m-%d %H:%M:%S") if failure.when else "?",
            ", ".join(failure.input_uris) or "?",
            str(failure.attempts or "?"),
            failure.error,
        )
    console.print(table)
    console.print("Fix the cause, then `mlops-lab redrive` runs them again.")


@app.command()
def redrive() -> None:
    """Run every failed event again; remove each that now completes, keep (and show) the ones still failing."""
    aws = Aws()
    render.where(aws)
    result = recovery.redrive(get_settings(), aws, on_rerun=render.rerun)
    console.print(
        f"[bold]{len(result.completed)} completed[/] and removed from the failure queue, "
        f"{len(result.still_failing)} still failing (kept)."
    )
    if result.still_failing:
        raise typer.Exit(ExitCode.FUNCTION_FAILED)


@app.command()
def reconcile(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be done.")] = False,
) -> None:
    """Re-run every input whose output is missing or stale; remove outputs a later run superseded. Safe any time."""
    aws = Aws()
    render.where(aws)
    result = lab_reconcile.reconcile(get_settings(), aws, dry_run=dry_run, on_rerun=render.rerun)
    render.reconciliation(result)
    if any(rerun.status == "failed" for rerun in result.reruns):
        raise typer.Exit(ExitCode.FUNCTION_FAILED)
