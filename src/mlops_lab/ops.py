"""The lab's operations, composed from the parts: what the CLI, the tests, the bench and compose's one-shot call.

``bring_up`` is the one recipe for a working lab: start the embedded services that are asked for (none under compose,
whose containers are the services), bootstrap the AWS resources, make sure a model is live, and write the env file.
It stops what it started if any step fails; used as a context manager it also stops them at the end.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from mlops_lab import emulator, model, recovery, registry, sagemaker, stack
from mlops_lab.aws import Aws, Change, is_not_found
from mlops_lab.bootstrap import bootstrap
from mlops_lab.contract import META_MODEL_KIND, META_MODEL_NAME, META_MODEL_VERSION, error_key, prediction_key
from mlops_lab.inference import PREDICTION_COLUMN, REGRESSOR
from mlops_lab.layer import LayerArtifact, build_layer, check_limits, interpreter_target
from mlops_lab.settings import Settings, as_environment

API = "api"
CONSOLE = "console"  # the lab console (mlops_lab.console): a web page on the lab, for people
SERVICES = (emulator.SERVICE_NAME, registry.SERVICE_NAME, API, CONSOLE)  # what bring_up can start
STOP_ORDER = (CONSOLE, API, registry.SERVICE_NAME, sagemaker.SERVICE_NAME, emulator.SERVICE_NAME)  # dependants first


# -- the services -------------------------------------------------------------------------------------------------


def _web_service(settings: Settings, name: str, app: str, host: str, port: int, description: str) -> stack.Service:
    """A FastAPI app of the lab's under uvicorn, with these settings (as LAB_* variables)."""
    url = f"http://{host}:{port}"
    return stack.Service(
        name=name,
        # The apps write their own access log (JSON lines), so uvicorn's is off.
        command=[sys.executable, "-m", "uvicorn", app, "--host", host, "--port", str(port), "--no-access-log"],
        health_url=url + "/health",
        # The tracking server of these settings, whatever mlflow.set_tracking_uri() left in this process's environment.
        env={**os.environ, **as_environment(settings), "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri},
        description=description,
        url=url,
    )


def api_service(settings: Settings) -> stack.Service:
    return _web_service(
        settings,
        API,
        "mlops_lab.api.app:app",
        settings.api_host,
        settings.api_port,
        "FastAPI inference service (docs at /docs)",
    )


def console_service(settings: Settings) -> stack.Service:
    return _web_service(
        settings,
        CONSOLE,
        "mlops_lab.console.app:app",
        settings.console_host,
        settings.console_port,
        "lab console: services, models, batch jobs, upload (a web page)",
    )


def service(settings: Settings, name: str) -> stack.Service:
    definitions: dict[str, Callable[[Settings], stack.Service]] = {
        emulator.SERVICE_NAME: emulator.service,
        registry.SERVICE_NAME: registry.server_service,
        API: api_service,
        CONSOLE: console_service,
        sagemaker.SERVICE_NAME: sagemaker.emulator_service,
    }
    return definitions[name](settings)


def stop_services(settings: Settings, names: Iterable[str] = STOP_ORDER) -> list[str]:
    """Stop the named services (default: all), dependants first; returns those that were running."""
    return [name for name in sorted(names, key=STOP_ORDER.index) if stack.stop(settings, service(settings, name))]


@dataclass(frozen=True)
class ServiceState:
    name: str
    pid: int | None
    healthy: bool
    url: str
    description: str


def service_states(settings: Settings) -> list[ServiceState]:
    """Each embedded service (moto's only once `deploy sagemaker` started it): its pid, health, URL."""
    names = [*SERVICES, *([sagemaker.SERVICE_NAME] if stack.pid_of(settings, sagemaker.SERVICE_NAME) else [])]
    states = []
    for name in names:
        definition = service(settings, name)
        pid = stack.pid_of(settings, name)
        healthy = stack.healthy(definition.health_url)
        states.append(ServiceState(name, pid, healthy, definition.url, definition.description))
    return states


@dataclass(frozen=True)
class Health:
    """The lab as a whole, from its services' states: an exit code (0 = fine) and what to do."""

    code: int
    message: str = ""


def lab_health(states: list[ServiceState]) -> Health:
    """Nothing runs: NOT_RUNNING. A service that should run does not answer its health check: UNHEALTHY. A service
    should run when it was started (it has a pid); the emulator also whenever any other service runs."""
    from mlops_lab.errors import ExitCode

    if not any(state.pid or state.healthy for state in states):
        return Health(int(ExitCode.NOT_RUNNING), "The lab is not running: `mlops-lab up` starts it.")
    anything_running = any(state.pid for state in states)
    sick = [
        state
        for state in states
        if not state.healthy and (state.pid or (state.name == emulator.SERVICE_NAME and anything_running))
    ]
    if sick:
        names = ", ".join(state.name for state in sick)
        return Health(
            int(ExitCode.UNHEALTHY),
            f"Unhealthy: {names} (should run, does not answer its health check): `mlops-lab logs {sick[0].name}` "
            "shows why; `mlops-lab up` starts what is missing.",
        )
    return Health(0)


def status_json(states: list[ServiceState], live: dict[str, str] | None, health: Health) -> dict[str, Any]:
    """`mlops-lab status --json`."""
    return {
        "ok": health.code == 0,
        "exit_code": health.code,
        "message": health.message,
        "services": [
            {
                "name": s.name,
                "pid": s.pid,
                "healthy": s.healthy,
                "state": "healthy" if s.healthy else ("unhealthy" if s.pid else "stopped"),
                "url": s.url,
                "description": s.description,
            }
            for s in states
        ],
        "live_model": (
            None if live is None else {"name": live.get(META_MODEL_NAME), "version": live.get(META_MODEL_VERSION)}
        ),
    }


def embedded_live_model(settings: Settings) -> dict[str, str] | None:
    """The embedded emulator's live model (its published metadata: name, version), or None when the emulator is not
    running or serves none. Talks to this checkout's emulator whatever the shell's SDK variables say."""
    if not stack.healthy(emulator.service(settings).health_url):
        return None
    os.environ.update(emulator.sdk_environment(settings))
    try:
        return model.published_metadata(settings, Aws())
    except ClientError:  # not bootstrapped yet
        return None


def target(aws: Aws | None = None) -> str:
    """Where the SDK sends this process's calls, in words (from the endpoint it resolves, profile and all)."""
    return (aws or Aws()).describe()


def write_env_file(settings: Settings) -> Path:
    """``.lab/env.sh``: selects the emulator's AWS profile (written into the AWS config file) and nothing else, so a
    shell that sources it keeps its own credentials and profiles, and `unset AWS_PROFILE` (or choosing another) is
    the whole way back to AWS."""
    emulator.write_profile(settings)
    path = settings.state_dir / "env.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(env_exports(settings))
    return path


def env_exports(settings: Settings) -> str:
    return (
        f"# The embedded lab: profile {emulator.PROFILE} in {emulator.aws_config_file()} "
        f"(endpoint {settings.emulator_url}). Back to AWS: unset AWS_PROFILE.\n"
        f"export AWS_PROFILE={emulator.PROFILE}\n"
    )


def credentials_in_environment() -> list[str]:
    """SDK credential variables set in this environment: they win over any profile's (say so when selecting one)."""
    return [
        name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") if os.environ.get(name)
    ]


# -- reset ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredData:
    """A folder of the lab's state that `reset` deletes, what it holds, and its size."""

    path: Path
    holds: str
    bytes: int


class ResetError(RuntimeError):
    pass


def stored_data(settings: Settings) -> list[StoredData]:
    """The emulator's state and mlflow's, which only go together: mlflow's registry points into the model bucket."""
    dirs = emulator.state_dirs(settings)
    folders = [
        (dirs.s3, "S3: every bucket and object (uploads, predictions, error reports, models, mlflow's artifacts)"),
        (dirs.services, "IAM, Lambda, SQS (failure records), ECR and bucket settings"),
        (settings.state_dir / "mlflow", "mlflow: experiments, runs, metrics, registered model versions"),
    ]
    return [StoredData(path, holds, _size(path)) for path, holds in folders if path.exists()]


def _size(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def reset(settings: Settings) -> tuple[list[str], list[StoredData]]:
    """Stop the embedded services and delete the emulator's state and mlflow's together; (stopped, deleted)."""
    if settings.mlflow_backend_uri:
        raise ResetError(
            f"mlflow's database is {settings.mlflow_backend_uri}, outside {settings.state_dir}: resetting the emulator "
            "alone would leave its registry pointing at deleted artifacts. Empty that database too, or unset "
            "LAB_MLFLOW_BACKEND_URI."
        )
    stopped = stop_services(settings)  # first: the emulator writes its state when it stops
    deleted = stored_data(settings)
    for data in deleted:
        shutil.rmtree(data.path)
    return stopped, deleted


# -- bring up -----------------------------------------------------------------------------------------------------


class Report:
    """How ``bring_up`` tells what it does; the CLI renders it, tests and the bench take this silent default."""

    def step(self, message: str) -> AbstractContextManager[object]:
        return nullcontext()

    def note(self, message: str) -> None:
        pass

    def change(self, change: Change) -> None:
        pass


@dataclass
class Lab:
    """A brought-up lab: the AWS session it used, what bootstrap did, and the services this call started."""

    settings: Settings
    aws: Aws
    changes: list[Change] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    env_file: Path | None = None

    def stop(self) -> list[str]:
        """Stop what this bring_up started (not what was already running)."""
        return stop_services(self.settings, self.started)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def bring_up(settings: Settings, *, services: Collection[str] = SERVICES, report: Report | None = None) -> Lab:
    """Start ``services`` (any of SERVICES; none when they run elsewhere, as under compose), bootstrap, make a model
    live. On any failure, stop what this call started and re-raise."""
    report = report or Report()
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown services {sorted(unknown)}: choose from {SERVICES}")
    already = {name for name in services if stack.pid_of(settings, name)}

    def started_here() -> list[str]:
        return [name for name in services if name not in already and stack.pid_of(settings, name)]

    try:
        if emulator.SERVICE_NAME in services:
            with report.step("Starting the emulator (first run installs it into its own venv)..."):
                emulator.ensure_installed(settings)
                stack.start(settings, emulator.service(settings))
            os.environ.update(emulator.sdk_environment(settings))  # this process (and what it starts) uses it
        # mlflow's start-up is mostly imports (~8 s): it runs while bootstrap does and is waited for at the end.
        mlflow = registry.server_service(settings) if registry.SERVICE_NAME in services else None
        if mlflow is not None:
            (settings.state_dir / "mlflow").mkdir(parents=True, exist_ok=True)  # the default sqlite backend's folder
            mlflow_pid = stack.launch(settings, mlflow)
        aws = Aws()
        report.note(f"[bold]Bootstrap[/] against {target(aws)}")
        changes = run_bootstrap(settings, aws, on_change=report.change)
        with report.step("Training / publishing the model..."):
            # With the services elsewhere (compose), their tracking server is up: the first model is registered and
            # promoted there. The embedded lab trains one locally (its mlflow is still starting).
            register = not services and registry.server_reachable(settings)
            model_changes = ensure_model(settings, aws, register=register)
        for change in model_changes:
            report.change(change)
        if API in services:
            with report.step("Starting the API..."):
                stack.start(settings, api_service(settings))
        if CONSOLE in services:
            with report.step("Starting the lab console..."):
                stack.start(settings, console_service(settings))
        if mlflow is not None:
            with report.step("Waiting for the mlflow tracking server..."):
                stack.wait_healthy(settings, mlflow, mlflow_pid, timeout=120)
        env_file = write_env_file(settings) if emulator.SERVICE_NAME in services else None
    except BaseException:
        # Half a stack is no use: stop what this call started (not what was already running), then report.
        stop_services(settings, started_here())
        raise
    return Lab(settings, aws, changes + model_changes, started_here(), env_file)


def ensure_model(settings: Settings, aws: Aws, *, register: bool = False, rows: int = 20000) -> list[Change]:
    """Leave a live model alone; otherwise make one live: register + promote a newly trained version when
    ``register`` (the tracking server answers), else publish ``settings.model_path`` (trained first if absent)."""
    live = model.published_metadata(settings, aws)
    if live is not None:
        version = live.get(META_MODEL_VERSION)
        return [Change("model", model.uri(settings), "unchanged", f"version {version}" if version else "")]
    if register:
        logged = registry.train_and_log(settings, rows=rows, seed=42)
        promotion = registry.promote(settings, aws, logged.version, name=logged.name)
        return [Change("model version", f"{logged.name} {logged.version}", "created", "registered"), promotion.change]
    changes = []
    if not settings.model_path.exists():
        from mlops_lab.train import train_and_export  # sklearn/pandas load only when training

        result = train_and_export(None, settings.model_path, rows=rows, seed=42)
        changes.append(Change("model", str(settings.model_path), "created", f"ROC AUC {result.metrics['roc_auc']:.3f}"))
    changes.append(model.publish(settings, aws, settings.model_path.read_bytes()))
    return changes


def layer_target(settings: Settings) -> tuple[str, str, bool, str | None]:
    """(python, platform, compress, bytecode_for) of the layer bootstrap publishes: for the embedded emulator's own
    interpreter, stored and with its bytecode (fast cold starts); otherwise AWS's runtime, deflated, source only."""
    python = emulator.lambda_python(settings)
    if python is not None:
        return (*interpreter_target(str(python)), False, str(python))
    return settings.layer_python, settings.layer_platform, True, None


def build_lambda_layer(settings: Settings, python: str | None = None, platform: str | None = None) -> LayerArtifact:
    """The layer for bootstrap's target; an explicit python/platform (`build-layer --python`) means a deflated zip
    for AWS or another emulator."""
    default_python, default_platform, compress, bytecode_for = layer_target(settings)
    if python or platform:
        compress, bytecode_for = True, None
    artifact = build_layer(
        settings.build_dir,
        python=python or default_python,
        platform=platform or default_platform,
        compress=compress,
        bytecode_for=bytecode_for,
    )
    check_limits(artifact)
    return artifact


def run_bootstrap(settings: Settings, aws: Aws, on_change: Callable[[Change], None] = lambda _: None) -> list[Change]:
    return bootstrap(settings, aws, build_lambda_layer(settings), on_change=on_change)


# -- predictions --------------------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    input_uri: str
    output_uri: str
    status: str  # ok | rejected
    seconds: float
    local_path: Path
    rows: int = 0
    label_counts: dict[str, int] | None = None  # a classifier's predictions
    value_range: tuple[float, float] | None = None  # a regressor's
    model: str = ""  # the name and version that scored it
    error: dict | None = None


class PredictTimeout(TimeoutError):
    pass


class PredictFailed(RuntimeError):
    """The function failed on the upload after its retries: the event is in the failure queue."""

    def __init__(self, failure: recovery.Failure) -> None:
        self.failure = failure
        super().__init__(
            f"the function failed on {', '.join(failure.input_uris)} after {failure.attempts or '?'} attempt(s): "
            f"{failure.error}. The event is kept in the failure queue: fix the cause, then `mlops-lab redrive`."
        )


FAILURE_CHECK_S = 2.0  # while waiting for an output, how often to look in the failure queue as well


def predict_file(
    settings: Settings,
    aws: Aws,
    path: Path,
    *,
    key: str | None = None,
    out_dir: Path | None = None,
    timeout: float = 300,
    on_wait: Callable[[float], None] = lambda _: None,
) -> BatchResult:
    """Upload a CSV to the input bucket and wait for the Lambda's predictions (or error report); PredictFailed as soon
    as the event lands in the failure queue instead."""
    s3 = aws.client("s3")
    key = key or path.name
    outputs = (prediction_key(key), error_key(key))
    # Earlier results for the same key would satisfy the wait at once: remove them first (the handler overwrites).
    s3.delete_objects(Bucket=settings.output_bucket, Delete={"Objects": [{"Key": k} for k in outputs], "Quiet": True})
    started = time.perf_counter()
    s3.upload_file(str(path), settings.input_bucket, key, ExtraArgs={"ContentType": "text/csv"})
    out_dir = out_dir or settings.state_dir / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = started + timeout
    next_failure_check = started + FAILURE_CHECK_S
    while True:
        if time.perf_counter() >= next_failure_check:
            failed = recovery.find_failure(settings, aws, settings.input_bucket, key)
            if failed is not None:
                raise PredictFailed(failed)
            next_failure_check = time.perf_counter() + FAILURE_CHECK_S
        for found in outputs:
            if _exists(s3, settings.output_bucket, found):
                seconds = time.perf_counter() - started
                local = out_dir / Path(found).name
                s3.download_file(settings.output_bucket, found, str(local))
                metadata = s3.head_object(Bucket=settings.output_bucket, Key=found).get("Metadata", {})
                return _result(settings, key, found, local, seconds, metadata)
        if time.perf_counter() > deadline:
            raise PredictTimeout(
                f"no predictions for s3://{settings.input_bucket}/{key} after {timeout:.0f} s and no failure recorded: "
                f"is the notification in place (`mlops-lab bootstrap`)? The function's log: CloudWatch group "
                f"/aws/lambda/{settings.function_name} (embedded: {settings.state_dir / 'logs' / 'emulator.log'})"
            )
        on_wait(time.perf_counter() - started)
        time.sleep(0.1)


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as error:
        if is_not_found(error):
            return False
        raise


def _result(
    settings: Settings, key: str, found_key: str, local: Path, seconds: float, metadata: dict[str, str]
) -> BatchResult:
    base = {
        "input_uri": f"s3://{settings.input_bucket}/{key}",
        "output_uri": f"s3://{settings.output_bucket}/{found_key}",
        "seconds": seconds,
        "local_path": local,
    }
    if found_key == error_key(key):
        return BatchResult(status="rejected", error=json.loads(local.read_text()), **base)
    identity = " ".join(filter(None, (metadata.get(META_MODEL_NAME), metadata.get(META_MODEL_VERSION))))
    with local.open(newline="") as handle:
        predictions = [row[PREDICTION_COLUMN] for row in csv.DictReader(handle)]
    if metadata.get(META_MODEL_KIND) == REGRESSOR:
        values = [float(value) for value in predictions]
        value_range = (min(values), max(values)) if values else None
        return BatchResult(status="ok", rows=len(values), value_range=value_range, model=identity, **base)
    labels = Counter(predictions)
    return BatchResult(status="ok", rows=len(predictions), label_counts=dict(labels), model=identity, **base)


# -- the demo's steps ---------------------------------------------------------------------------------------------


def write_sample(settings: Settings, rows: int, *, seed: int = 7) -> tuple[Path, dict]:
    """``rows`` generated rows (no label) as a CSV under the state dir; the path and the first row as a record."""
    from mlops_lab.data import generate, write_csv

    path = settings.state_dir / "data" / "sample.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = generate(rows, seed=seed, with_label=False)
    write_csv(frame, path)
    return path, json.loads(frame.iloc[[0]].to_json(orient="records"))[0]


def predict_online(settings: Settings, record: dict, *, version: str, timeout: float) -> str:
    """POST one record to the API once it serves ``version`` (it polls the model bucket); the response body."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=settings.api_url, timeout=10) as client:
        while time.monotonic() < deadline:
            served = client.get("/metadata").json().get("version") if client.get("/ready").status_code == 200 else None
            if served == version:
                break
            time.sleep(0.5)
        response = client.post("/predict", json=record)
    response.raise_for_status()
    return response.text


# -- train --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    """What `train` did: always metrics and the local ONNX file; a registry version when mlflow was used; the
    promotion (mlflow) or the plain publish (no mlflow) when it was made live."""

    metrics: dict[str, float | int]
    path: Path
    logged: registry.LoggedVersion | None = None
    promotion: registry.Promotion | None = None
    published: Change | None = None


def train(
    settings: Settings,
    data: Path | None = None,
    *,
    rows: int = 20000,
    seed: int = 42,
    publish: bool | None = None,
    mlflow: bool | None = None,
) -> Trained:
    """Train, export and verify the ONNX model. With mlflow (default: when the tracking server answers) log and
    register it, and promote it only when ``publish``; without, publish it unless ``publish`` is False."""
    if mlflow is None:
        mlflow = registry.server_reachable(settings)
    if mlflow:
        logged = registry.train_and_log(settings, data, rows=rows, seed=seed)
        promotion = registry.promote(settings, Aws(), logged.version, name=logged.name) if publish else None
        return Trained(logged.metrics, settings.model_path, logged=logged, promotion=promotion)
    from mlops_lab.train import train_and_export

    metrics = train_and_export(data, settings.model_path, rows=rows, seed=seed).metrics
    published = model.publish(settings, Aws(), settings.model_path.read_bytes()) if publish in (None, True) else None
    return Trained(metrics, settings.model_path, published=published)
