"""The lab's operations, composed from the parts: what the CLI commands (and the tests) call."""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError

from mlops_lab import emulator, stack
from mlops_lab.aws import Aws, is_not_found, lab_environment
from mlops_lab.bootstrap import Change, bootstrap, publish_model
from mlops_lab.layer import LayerArtifact, build_layer, check_limits, interpreter_target
from mlops_lab.settings import Settings


def embedded_endpoint(settings: Settings) -> bool:
    """Is the SDK pointed at this checkout's embedded emulator (whose interpreter then runs the Lambda)?"""
    return os.environ.get("AWS_ENDPOINT_URL", "").rstrip("/") == settings.emulator_url


def layer_target(settings: Settings) -> tuple[str, str, bool, str | None]:
    """(python, platform, compress, bytecode_for) of the layer bootstrap publishes: for the embedded emulator's own
    interpreter, stored and with its bytecode (fast cold starts); otherwise AWS's runtime, deflated, source only."""
    install = emulator.EmulatorInstall(settings.emulator_venv)
    if embedded_endpoint(settings) and install.python.exists():
        return (*interpreter_target(str(install.python)), False, str(install.python))
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


def start_services(settings: Settings, *, with_api: bool = True) -> dict[str, str]:
    """Start the embedded emulator (and API); point this process's SDK at it. Returns the SDK variables."""
    emulator.ensure_installed(settings)
    stack.start(settings, stack.emulator_service(settings))
    env = lab_environment(settings.emulator_url)
    os.environ.update(env)
    return env


def start_api(settings: Settings, env: dict[str, str]) -> None:
    stack.start(settings, stack.api_service(settings, env))


def start_mlflow(settings: Settings, env: dict[str, str], *, wait: bool = True) -> Callable[[], None]:
    """The mlflow tracking server. It touches the model bucket only when artifacts are logged, so it may start before
    bootstrap. ``wait=False`` returns at once (its start-up is mostly ~8 s of imports) with the function that waits
    for it to be healthy: ``up`` overlaps that with bootstrap."""
    (settings.state_dir / "mlflow").mkdir(parents=True, exist_ok=True)  # the default sqlite backend's folder
    service = stack.mlflow_service(settings, env)
    pid = stack.launch(settings, service)

    def wait_until_healthy() -> None:
        stack.wait_healthy(settings, service, pid, timeout=120)

    if wait:
        wait_until_healthy()
    return wait_until_healthy


SERVICES_STOP_ORDER = ("api", "mlflow", "sagemaker-emulator", "emulator")


def stop_services(settings: Settings, names: Iterable[str] = SERVICES_STOP_ORDER) -> list[str]:
    """Stop the named services (default: all), dependants first; returns those that were running."""
    stopped = []
    for name in sorted(names, key=SERVICES_STOP_ORDER.index):
        # The emulator's Service carries its temp dir, which MiniStack's workers can leave behind.
        service = stack.emulator_service(settings) if name == "emulator" else name
        if stack.stop(settings, service):
            stopped.append(name)
    return stopped


def write_env_file(settings: Settings, env: dict[str, str]) -> Path:
    path = settings.state_dir / "env.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"export {key}={value}\n" for key, value in env.items()))
    return path


def ensure_model(settings: Settings, aws: Aws, *, rows: int = 20000, seed: int = 42) -> list[Change]:
    """Train a model if none was trained yet, then publish it to the model bucket (no-op when already there)."""
    from mlops_lab.train import train_and_export  # sklearn/pandas load only when training

    changes = []
    if not settings.model_path.exists():
        result = train_and_export(None, settings.model_path, rows=rows, seed=seed)
        changes.append(Change("model", str(settings.model_path), "created", f"ROC AUC {result.metrics['roc_auc']:.3f}"))
    changes.append(publish_model(settings, aws, settings.model_path.read_bytes()))
    return changes


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
    label_counts: dict[str, int] | None = None
    error: dict | None = None


class PredictTimeout(TimeoutError):
    pass


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
    """Upload a CSV to the input bucket and wait for the Lambda's predictions (or error report)."""
    s3 = aws.client("s3")
    key = key or path.name
    prediction_key, error_key = f"predictions/{key}", f"errors/{key}.json"
    # Earlier results for the same key would satisfy the wait at once: remove them first (the handler overwrites).
    s3.delete_objects(
        Bucket=settings.output_bucket,
        Delete={"Objects": [{"Key": prediction_key}, {"Key": error_key}], "Quiet": True},
    )
    started = time.perf_counter()
    s3.upload_file(str(path), settings.input_bucket, key, ExtraArgs={"ContentType": "text/csv"})
    out_dir = out_dir or settings.state_dir / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = started + timeout
    while True:
        for found_key in (prediction_key, error_key):
            if _exists(s3, settings.output_bucket, found_key):
                seconds = time.perf_counter() - started
                local = out_dir / Path(found_key).name
                s3.download_file(settings.output_bucket, found_key, str(local))
                return _result(settings, key, found_key, local, seconds)
        if time.perf_counter() > deadline:
            raise PredictTimeout(
                f"no predictions for s3://{settings.input_bucket}/{key} after {timeout:.0f} s: "
                f"check the function's logs (mlops-lab logs) and that bootstrap ran"
            )
        on_wait(time.perf_counter() - started)
        time.sleep(0.1)


def _exists(s3, bucket: str, key: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as error:
        if is_not_found(error):
            return False
        raise


def _result(settings: Settings, key: str, found_key: str, local: Path, seconds: float) -> BatchResult:
    base = {
        "input_uri": f"s3://{settings.input_bucket}/{key}",
        "output_uri": f"s3://{settings.output_bucket}/{found_key}",
        "seconds": seconds,
        "local_path": local,
    }
    if found_key.startswith("errors/"):
        return BatchResult(status="rejected", error=json.loads(local.read_text()), **base)
    with local.open(newline="") as handle:
        labels = Counter(row["prediction"] for row in csv.DictReader(handle))
    return BatchResult(status="ok", rows=sum(labels.values()), label_counts=dict(labels), **base)
