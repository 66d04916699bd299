"""`mlops-lab`: one Typer command per pipeline step."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from mlops_lab import lab, stack
from mlops_lab.aws import Aws
from mlops_lab.bootstrap import Change, teardown as teardown_resources
from mlops_lab.settings import get_settings

app = typer.Typer(help="An offline AWS MLOps lab: S3 -> Lambda batch predictions on an emulator or real AWS.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)  # fmt: skip
# Without a terminal (make, CI logs) rich would wrap at 80 columns and cut the endpoints table.
console = Console() if Console().is_terminal else Console(width=120)

_STYLE = {"created": "green", "published": "green", "updated": "yellow", "deleted": "red", "unchanged": "dim",
          "absent": "dim"}  # fmt: skip


def _print_change(change: Change) -> None:
    style = _STYLE.get(change.action, "")
    detail = f"  [dim]{change.detail}[/]" if change.detail else ""
    console.print(f"  [{style}]{change.action:>9}[/]  {change.kind:<17} {change.name}{detail}")


def _summarise(changes: list[Change]) -> None:
    changed = [c for c in changes if c.action not in {"unchanged", "absent"}]
    if changed:
        console.print(f"[bold]{len(changed)} change(s)[/], {len(changes) - len(changed)} unchanged.")
    else:
        console.print("[bold]Nothing to change[/]: everything already exists as wanted.")


def _target() -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return f"emulator at {endpoint}" if endpoint else "real AWS (AWS_ENDPOINT_URL is not set)"


@app.command()
def up(api: Annotated[bool, typer.Option(help="Also start the inference API.")] = True) -> None:
    """Start the embedded stack (emulator, API), train a model if none exists, bootstrap, and show the endpoints."""
    _bring_up(api=api)


def _bring_up(*, api: bool) -> list[str]:
    """`up`'s work; returns the services this call started (not those already running)."""
    settings = get_settings()
    already = {name for name in ("emulator", "api") if stack.pid_of(settings, name)}
    started = time.perf_counter()
    with console.status("Starting the emulator (first run installs it into its own venv)..."):
        env = lab.start_services(settings)
    aws = Aws()
    console.print(f"[bold]Bootstrap[/] against {_target()}")
    changes = lab.run_bootstrap(settings, aws, on_change=_print_change)
    with console.status("Training / publishing the model..."):
        model_changes = lab.ensure_model(settings, aws)
    for change in model_changes:
        _print_change(change)
    _summarise(changes + model_changes)
    if api:
        with console.status("Starting the API..."):
            lab.start_api(settings, env)
    env_file = lab.write_env_file(settings, env)
    _status_table(settings)
    console.print(f"Ready in {time.perf_counter() - started:.1f} s. Point your shell at the lab: [bold]source {env_file}[/]")
    return [name for name in ("emulator", "api") if stack.pid_of(settings, name) and name not in already]


@app.command()
def down() -> None:
    """Stop every embedded service and remove the emulator's temporary files."""
    stopped = lab.stop_services(get_settings())
    console.print(f"Stopped: {', '.join(stopped)}" if stopped else "Nothing was running.")


@app.command()
def status() -> None:
    """Show the embedded services, their endpoints and health."""
    _status_table(get_settings())


def _status_table(settings) -> None:  # type: ignore[no-untyped-def]
    table = Table(title="mlops-lab")
    for column in ("service", "state", "endpoint", "what"):
        table.add_column(column)
    services = [stack.emulator_service(settings), stack.api_service(settings, {})]
    for service in services:
        pid = stack.pid_of(settings, service.name)
        healthy = stack.healthy(service.health_url)
        state = "[green]healthy[/]" if healthy else ("[yellow]starting/unhealthy[/]" if pid else "[dim]stopped[/]")
        table.add_row(service.name, state + (f" (pid {pid})" if pid else ""), service.url, service.description)
    console.print(table)
    console.print(
        f"buckets: s3://{settings.input_bucket} (upload CSVs) -> s3://{settings.output_bucket}/predictions/ ; "
        f"model: s3://{settings.model_bucket}/{settings.model_key}"
    )


@app.command("install-emulator")
def install_emulator() -> None:
    """Install the emulator (MiniStack) into its own venv; `make install` runs this."""
    from mlops_lab.emulator import ensure_installed

    install = ensure_installed(get_settings())
    console.print(f"Emulator installed in {install.venv}")


@app.command()
def env() -> None:
    """Print the shell exports that point the AWS CLI/SDK at the embedded emulator."""
    from mlops_lab.aws import lab_environment

    for key, value in lab_environment(get_settings().emulator_url).items():
        print(f"export {key}={value}")


@app.command()
def bootstrap() -> None:
    """Create the buckets, role, layer, function, permission and notification (idempotent)."""
    settings = get_settings()
    console.print(f"[bold]Bootstrap[/] against {_target()}")
    changes = lab.run_bootstrap(settings, Aws(), on_change=_print_change)
    _summarise(changes)


@app.command()
def teardown(yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False) -> None:
    """Delete everything bootstrap created (buckets and their objects included)."""
    settings = get_settings()
    if not yes and not typer.confirm(f"Delete the lab's resources (prefix {settings.prefix}) on {_target()}?"):
        raise typer.Abort()
    changes = teardown_resources(settings, Aws(), on_change=_print_change)
    console.print(f"[bold]{sum(c.action == 'deleted' for c in changes)} deleted[/].")


@app.command("build-layer")
def build_layer(
    python: Annotated[str | None, typer.Option(help="Target Python X.Y (default: the emulator's, else 3.12).")] = None,
    platform: Annotated[str | None, typer.Option(help="Wheel platform tag, e.g. manylinux_2_28_x86_64.")] = None,
) -> None:
    """Build the Lambda layer zip (onnxruntime + numpy + the inference core); refuse it over AWS's limits."""
    with console.status("Building the layer..."):
        artifact = lab.build_lambda_layer(get_settings(), python, platform)
    console.print(
        f"{artifact.path}\n  py{artifact.python} {artifact.platform}: {artifact.zipped_bytes / 1e6:.1f} MB zipped, "
        f"{artifact.unzipped_bytes / 1e6:.1f} MB unzipped, sha256 {artifact.sha256[:16]}"
    )


@app.command()
def train(
    data: Annotated[Path | None, typer.Option(help="Training CSV (lab format or the raw UCI Adult file).")] = None,
    rows: Annotated[int, typer.Option(help="Rows to generate when no --data is given.")] = 20000,
    seed: Annotated[int, typer.Option()] = 42,
    publish: Annotated[bool, typer.Option(help="Publish to the model bucket afterwards.")] = True,
) -> None:
    """Train the census-income classifier, export it to ONNX, check agreement, and publish it."""
    from mlops_lab.bootstrap import publish_model
    from mlops_lab.train import train_and_export

    settings = get_settings()
    with console.status("Training..."):
        result = train_and_export(data, settings.model_path, rows=rows, seed=seed)
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items() if isinstance(v, float))
    console.print(f"Trained and exported {settings.model_path} ({metrics})")
    if publish:
        _print_change(publish_model(settings, Aws(), settings.model_path.read_bytes()))


@app.command()
def predict(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A CSV with the model's columns.")],
    key: Annotated[str | None, typer.Option(help="Object key in the input bucket (default: the file name).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the Lambda's output.")] = 300,
) -> None:
    """Upload a CSV to the input bucket, wait for the Lambda's predictions, download and summarise them."""
    _predict(file, key, timeout)


def _predict(file: Path, key: str | None, timeout: float) -> lab.BatchResult:
    settings = get_settings()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"Uploaded {file.name}; waiting for the Lambda's output...", total=None)
        result = lab.predict_file(settings, Aws(), file, key=key, timeout=timeout,
                                  on_wait=lambda _: bar.update(task))  # fmt: skip
    if result.status == "rejected":
        console.print(f"[red]Rejected[/]: {result.error['reason'] if result.error else ''} -> {result.output_uri}")
        raise typer.Exit(1)
    counts = ", ".join(f"{label}: {count:,}" for label, count in sorted((result.label_counts or {}).items()))
    console.print(
        f"[green]{result.rows:,} rows scored[/] in {result.seconds:.2f} s -> {result.output_uri}\n"
        f"  labels: {counts}\n  downloaded to {result.local_path}"
    )
    return result


@app.command()
def demo(
    rows: Annotated[int, typer.Option(help="Sample rows to generate and score.")] = 10000,
    keep: Annotated[bool, typer.Option(help="Leave the services it started running afterwards.")] = False,
) -> None:
    """The whole flow on sample data: up, generate a CSV, upload it, show the Lambda's predictions."""
    started = time.perf_counter()
    launched = _bring_up(api=True)
    try:
        _demo_pipeline(rows)
    finally:
        if launched and not keep:
            for name in reversed(launched):
                stack.stop(get_settings(), stack.emulator_service(get_settings()) if name == "emulator" else name)
            console.print(f"Stopped what the demo started ({', '.join(launched)}); `make up` keeps the lab running.")
    console.print(f"Whole demo took {time.perf_counter() - started:.1f} s.")


def _demo_pipeline(rows: int) -> None:
    from mlops_lab.data import generate, write_csv

    settings = get_settings()
    sample = settings.state_dir / "data" / "sample.csv"
    sample.parent.mkdir(parents=True, exist_ok=True)
    write_csv(generate(rows, seed=7, with_label=False), sample)
    console.rule("Batch: S3 upload -> Lambda -> S3")
    result = _predict(sample, None, 300)
    with result.local_path.open() as handle:
        preview = [next(handle) for _ in range(3)]
    console.print("[dim]" + "".join(preview).rstrip() + "[/]")
    console.rule("Summary")
    counts = ", ".join(f"{label} {count:,}" for label, count in sorted((result.label_counts or {}).items()))
    console.print(f"{result.rows:,} rows scored by the Lambda in {result.seconds:.2f} s (upload -> predictions): {counts}")


if __name__ == "__main__":
    app()
