"""`mlops-lab`: one Typer command per pipeline step."""

from __future__ import annotations

import json
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
from mlops_lab.bootstrap import Change
from mlops_lab.bootstrap import teardown as teardown_resources
from mlops_lab.settings import get_settings

app = typer.Typer(
    help="An offline AWS MLOps lab: S3 -> Lambda batch predictions on an emulator or real AWS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
# Without a terminal (make, CI logs) rich would wrap at 80 columns and cut the endpoints table.
console = Console() if Console().is_terminal else Console(width=120)

_STYLE = {
    "created": "green",
    "published": "green",
    "updated": "yellow",
    "deleted": "red",
    "unchanged": "dim",
    "absent": "dim",
}


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
def up(
    api: Annotated[bool, typer.Option(help="Also start the inference API.")] = True,
    mlflow: Annotated[bool, typer.Option(help="Also start the mlflow tracking server.")] = True,
) -> None:
    """Start the embedded stack (emulator, API), train a model if none exists, bootstrap, and show the endpoints."""
    _bring_up(api=api, mlflow=mlflow)


def _bring_up(*, api: bool, mlflow: bool = False) -> list[str]:
    """`up`'s work; returns the services this call started (not those already running)."""
    settings = get_settings()
    already = {name for name in ("emulator", "mlflow", "api") if stack.pid_of(settings, name)}

    def started_here() -> list[str]:
        return [name for name in ("emulator", "mlflow", "api") if stack.pid_of(settings, name) and name not in already]

    started = time.perf_counter()
    try:
        with console.status("Starting the emulator (first run installs it into its own venv)..."):
            env = lab.start_services(settings)
        # mlflow's start-up is mostly imports: it runs while bootstrap does, and is waited for at the end.
        wait_for_mlflow = lab.start_mlflow(settings, env, wait=False) if mlflow else None
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
        if wait_for_mlflow is not None:
            with console.status("Waiting for the mlflow tracking server..."):
                wait_for_mlflow()
        env_file = lab.write_env_file(settings, env)
        _status_table(settings)
        console.print(
            f"Ready in {time.perf_counter() - started:.1f} s. Point your shell at the lab: [bold]source {env_file}[/]"
        )
    except BaseException:
        # Half a stack is no use: stop what this call started (not what was already running), then report.
        lab.stop_services(settings, started_here())  # (stop_services orders them: dependants first)
        raise
    return started_here()


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
    from mlops_lab import sagemaker

    services = [stack.emulator_service(settings), stack.mlflow_service(settings, {}), stack.api_service(settings, {})]
    if stack.pid_of(settings, sagemaker.SERVICE_NAME):
        services.append(sagemaker.emulator_service(settings))
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
        f"{artifact.path}\n  py{artifact.python} {artifact.platform}: {artifact.zipped_bytes / 1e6:.1f} MB "
        f"{'zipped' if artifact.compressed else 'stored (emulator only: extracts faster)'}, "
        f"{artifact.unzipped_bytes / 1e6:.1f} MB unzipped, sha256 {artifact.sha256[:16]}"
    )


@app.command()
def train(
    data: Annotated[Path | None, typer.Option(help="Training CSV (lab format or the raw UCI Adult file).")] = None,
    rows: Annotated[int, typer.Option(help="Rows to generate when no --data is given.")] = 20000,
    seed: Annotated[int, typer.Option()] = 42,
    publish: Annotated[
        bool | None,
        typer.Option(
            help="Publish to the model bucket afterwards (default: yes without mlflow; with mlflow `promote` publishes).",
            show_default=False,
        ),
    ] = None,
    mlflow: Annotated[
        bool | None,
        typer.Option(
            help="Log the run and register a version (default: when the tracking server answers).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train the census-income classifier, export it to ONNX, check agreement; log + register it, or publish it."""
    from mlops_lab import registry
    from mlops_lab.bootstrap import publish_model
    from mlops_lab.train import train_and_export

    settings = get_settings()
    if mlflow is None:
        mlflow = registry.server_reachable(settings)
    with console.status("Training" + (f" and logging to {settings.mlflow_tracking_uri}..." if mlflow else "...")):
        if mlflow:
            logged = registry.train_and_log(settings, data, rows=rows, seed=seed)
            result_metrics = logged.metrics
        else:
            result_metrics = train_and_export(data, settings.model_path, rows=rows, seed=seed).metrics
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in result_metrics.items() if isinstance(v, float))
    console.print(f"Trained and exported {settings.model_path} ({metrics})")
    if mlflow:
        console.print(
            f"Registered [bold]{logged.name} version {logged.version}[/] (run {logged.run_id}): "
            f"{settings.mlflow_tracking_uri}/#/models/{logged.name}/versions/{logged.version}"
        )
        if publish:
            _print_promotion(registry.promote(settings, Aws(), logged.version))
        else:
            console.print(f"Serve it with [bold]mlops-lab promote {logged.version}[/]")
    elif publish is None or publish:
        _print_change(publish_model(settings, Aws(), settings.model_path.read_bytes()))


def _print_promotion(promotion) -> None:  # type: ignore[no-untyped-def]
    _print_change(promotion.change)
    agreement = promotion.agreement
    checked = (
        f"ONNX agrees with sklearn on {agreement.rows:,} holdout rows (max |dp| {agreement.max_probability_diff:.1e}); "
        if agreement
        else ""
    )
    console.print(
        f"{checked}[bold]{promotion.name} version {promotion.version}[/] is now @champion and live "
        f"(was {promotion.previous or 'unversioned/none'}). The Lambda and the API pick it up without a redeploy."
    )


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Registry version to serve (an older one rolls back).")],
) -> None:
    """Check a version's ONNX against its sklearn pipeline, publish it to the model bucket, set @champion."""
    from mlops_lab import registry
    from mlops_lab.train import AgreementError

    try:
        promotion = registry.promote(get_settings(), Aws(), version)
    except (AgreementError, registry.RegistryError) as error:
        console.print(f"[red]Refused[/]: {error}")
        raise typer.Exit(1) from None
    _print_promotion(promotion)


@app.command()
def models() -> None:
    """List the registered versions, their aliases and metrics, and which one the Lambda and API serve."""
    from mlops_lab import registry

    settings = get_settings()
    try:
        rows = registry.list_versions(settings, Aws())
    except registry.RegistryError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from None
    table = Table(title=f"{settings.model_name} ({settings.mlflow_tracking_uri})")
    for column in ("version", "aliases", "live", "accuracy", "roc_auc", "f1", "created", "run"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.version,
            ", ".join(row.aliases),
            "[green]live[/]" if row.live else "",
            *(f"{row.metrics[m]:.3f}" if m in row.metrics else "" for m in ("accuracy", "roc_auc", "f1")),
            row.created,
            row.run_id[:12],
        )
    console.print(table if rows else "No versions yet: `mlops-lab train` logs and registers one.")


image_app = typer.Typer(help="The API's container image and its ECR repository.", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("push")
def image_push(
    tag: Annotated[str, typer.Option(help="Image tag.")] = "latest",
    base_image: Annotated[
        str | None, typer.Option(help="Build argument BASE_IMAGE (default python:3.12-slim).")
    ] = None,
) -> None:
    """Create the ECR repository (idempotent, scan on push, lifecycle policy), build api/Dockerfile, tag, push."""
    from mlops_lab import image

    settings = get_settings()
    try:
        result = image.build_and_push(settings, tag=tag, base_image=base_image, ecr=Aws().client("ecr"))
    except image.EngineMissing as error:
        repository = image.ensure_repository(settings, Aws().client("ecr"))
        console.print(f"ECR repository ready: {repository['repositoryUri']}\n[yellow]Not built or pushed[/]: {error}")
        raise typer.Exit(1) from None
    console.print(f"[green]Pushed[/] {result.image}")


deploy_app = typer.Typer(help="Deploy the champion model elsewhere.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("sagemaker")
def deploy_sagemaker(
    model_uri: Annotated[str | None, typer.Option(help="Default: models:/<model>@champion.")] = None,
    emulate: Annotated[
        bool | None,
        typer.Option(
            help="Run SageMaker's control plane on moto (default: when AWS_ENDPOINT_URL points at an emulator).",
            show_default=False,
        ),
    ] = None,
    invoke: Annotated[
        bool, typer.Option(help="Then send a CSV and a JSON invocation to the lab API's /invocations.")
    ] = True,
) -> None:
    """Deploy with mlflow's SageMaker deployments client: model, endpoint config, endpoint (create or replace)."""
    from mlops_lab import sagemaker

    settings = get_settings()
    aws = Aws()
    if emulate is None:
        emulate = bool(os.environ.get("AWS_ENDPOINT_URL"))
    url = None
    if emulate:
        with console.status("Starting moto (SageMaker control plane)..."):
            url = sagemaker.ensure_emulator(settings)
    with console.status(f"Deploying with mlflow's sagemaker:/{aws.region} client..."):
        deployment = sagemaker.deploy(settings, aws, model_uri=model_uri, sagemaker_url=url)
    for change in deployment.changes:
        _print_change(change)
    console.print(
        f"[green]{deployment.mode}d[/] endpoint [bold]{deployment.endpoint}[/] ({deployment.status}) "
        f"{'on moto at ' + url if url else 'on AWS'}\n  model {deployment.model}: {deployment.model_uri}\n"
        f"  image {deployment.image}\n  role {deployment.role_arn}\n  model data {deployment.model_data}"
    )
    if invoke and url:
        _invoke_through_api(settings, deployment.endpoint, url)


def _invoke_through_api(settings, endpoint: str, url: str) -> None:  # type: ignore[no-untyped-def]
    import boto3
    import httpx

    from mlops_lab import sagemaker
    from mlops_lab.data import generate

    api = f"http://{settings.api_host}:{settings.api_port}"
    if not stack.healthy(api + "/health"):
        console.print(f"[dim]The API is not running at {api}: skipped the invocation round-trip.[/]")
        return
    session = boto3.session.Session()
    with httpx.Client(base_url=api, timeout=30) as container, sagemaker.sagemaker_endpoint(url):
        sagemaker.forward_invocations(session, container)
        runtime = session.client("sagemaker-runtime")
        sample = generate(3, seed=5, with_label=False)
        for content_type, body in (
            ("text/csv", sample.to_csv(index=False)),
            ("application/json", sample.to_json(orient="split", index=False)),
        ):
            if content_type == "application/json":
                body = '{"dataframe_split": ' + body + "}"
            answer = runtime.invoke_endpoint(
                EndpointName=endpoint, ContentType=content_type, Accept="application/json", Body=body.encode()
            )
            console.print(f"  invoke_endpoint {content_type} -> {answer['Body'].read().decode()[:200]}")


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
        result = lab.predict_file(settings, Aws(), file, key=key, timeout=timeout, on_wait=lambda _: bar.update(task))
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
    """The whole flow on sample data: up, register + promote a model, batch through the Lambda, one API call."""
    started = time.perf_counter()
    launched = _bring_up(api=True, mlflow=True)
    try:
        _demo_pipeline(rows)
    finally:
        if launched and not keep:
            lab.stop_services(get_settings(), launched)
            console.print(f"Stopped what the demo started ({', '.join(launched)}); `make up` keeps the lab running.")
    console.print(f"Whole demo took {time.perf_counter() - started:.1f} s.")


def _demo_pipeline(rows: int) -> None:
    from mlops_lab import registry
    from mlops_lab.data import generate, write_csv

    settings = get_settings()
    console.rule("Registry: train -> mlflow run + version -> promote")
    logged = registry.train_and_log(settings, rows=20000, seed=int(time.time()) % 1000, run_name="demo")
    console.print(
        f"Logged run {logged.run_id[:12]} (ROC AUC {logged.metrics['roc_auc']:.3f}) and registered "
        f"{logged.name} version {logged.version}"
    )
    _print_promotion(registry.promote(settings, Aws(), logged.version))

    console.rule("Batch: S3 upload -> Lambda -> S3")
    sample = settings.state_dir / "data" / "sample.csv"
    sample.parent.mkdir(parents=True, exist_ok=True)
    frame = generate(rows, seed=7, with_label=False)
    write_csv(frame, sample)
    result = _predict(sample, None, 300)
    with result.local_path.open() as handle:
        preview = [next(handle) for _ in range(3)]
    console.print("[dim]" + "".join(preview).rstrip() + "[/]")

    console.rule("Online: POST /predict")
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    record = json.loads(frame.iloc[[0]].to_json(orient="records"))[0]  # the first row the Lambda scored
    answer = _api_prediction(api_url, record, logged.version, settings.api_model_poll_s + 20)
    console.print(f"curl -s {api_url}/predict -H 'content-type: application/json' -d '{json.dumps(record)}'")
    console.print(answer)

    console.rule("Summary")
    counts = ", ".join(f"{label} {count:,}" for label, count in sorted((result.label_counts or {}).items()))
    console.print(
        f"Batch: {result.rows:,} rows scored by the Lambda in {result.seconds:.2f} s (upload -> predictions): {counts}\n"
        f"Online: {api_url}/docs    Registry: {settings.mlflow_tracking_uri} "
        f"({logged.name} version {logged.version} is @champion and live)"
    )


def _api_prediction(api_url: str, record: dict, version: str, timeout: float) -> str:
    """POST one record once the API has hot-swapped to ``version`` (it polls the model bucket)."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api_url, timeout=10) as client:
        while time.monotonic() < deadline:
            served = client.get("/metadata").json().get("version") if client.get("/ready").status_code == 200 else None
            if served == version:
                break
            time.sleep(0.5)
        response = client.post("/predict", json=record)
    response.raise_for_status()
    return response.text


if __name__ == "__main__":
    app()
