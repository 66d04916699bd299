"""The lab as a whole: ``bring_up`` and the demo's steps, composed from the parts (services, bootstrap, registry,
jobs). What the CLI, the tests, the bench and compose's one-shot call.

``bring_up`` is the one recipe for a working lab: start the embedded services that are asked for (none under compose,
whose containers are the services), bootstrap the AWS resources, make sure a model is live, and write the env file.
It stops what it started if any step fails; used as a context manager it also stops them at the end. The AWS session
it returns (``Lab.aws``) points at the lab's emulator when it started one; this process's environment is left as it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from mlops_lab import emulator, model, registry, sagemaker, stack, training
from mlops_lab.aws import Aws, Change
from mlops_lab.bootstrap import run_bootstrap
from mlops_lab.contract import META_MODEL_VERSION
from mlops_lab.services import API, CONSOLE, SERVICES, api_service, console_service, stop_services, write_env_file
from mlops_lab.settings import Settings

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
    live. On any failure, stop what this call started and re-raise. Holds the state dir's lock throughout: a second
    `up` meanwhile fails at once (``stack.LabBusy``, exit 11)."""
    report = report or Report()
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown services {sorted(unknown)}: choose from {SERVICES}")
    # One `up` at a time on a state dir: a second one fails at once (stack.LabBusy) instead of racing this one.
    with stack.lab_lock(settings, "up"):
        return _bring_up(settings, services, report)


def _bring_up(settings: Settings, services: Collection[str], report: Report) -> Lab:
    already = {name for name in services if stack.pid_of(settings, name)}

    def started_here() -> list[str]:
        return [name for name in services if name not in already and stack.pid_of(settings, name)]

    embedded = emulator.SERVICE_NAME in services
    # The embedded emulator is named to this process's session and to each service explicitly; otherwise the SDK's
    # own configuration decides (a profile, AWS_ENDPOINT_URL, compose's variables).
    aws = emulator.aws(settings) if embedded else Aws()
    sdk = emulator.sdk_environment(settings) if embedded else {}
    try:
        if embedded:
            with report.step("Starting the emulator (first run installs it into its own venv)..."):
                emulator.ensure_installed(settings)
                stack.start(settings, emulator.service(settings))
        # mlflow's start-up is mostly imports (~8 s): it runs while bootstrap does and is waited for at the end.
        mlflow = registry.server_service(settings, sdk) if registry.SERVICE_NAME in services else None
        if mlflow is not None:
            (settings.state_dir / "mlflow").mkdir(parents=True, exist_ok=True)  # the default sqlite backend's folder
            mlflow_pid = stack.launch(settings, mlflow)
        # The lab's SageMaker (moto's imports, ~2 s) starts meanwhile too; S3 for it is the emulator's.
        sagemaker_service = sagemaker.emulator_service(settings, sdk) if sagemaker.SERVICE_NAME in services else None
        if sagemaker_service is not None:
            sagemaker_pid = stack.launch(settings, sagemaker_service)
        report.note(f"[bold]Bootstrap[/] against {aws.describe(account=True)}")
        # The embedded emulator is this checkout's own (its state is in the lab's state dir): everything of the lab's
        # names in it is the lab's, tags lost in a crash included. Elsewhere bootstrap takes over nothing untagged.
        changes = run_bootstrap(settings, aws, on_change=report.change, adopt=embedded)
        with report.step("Training / publishing the model..."):
            # With the services elsewhere (compose), their tracking server is up: the first model is registered and
            # promoted there. The embedded lab trains one locally (its mlflow is still starting).
            register = not services and registry.server_reachable(settings)
            model_changes = ensure_model(settings, aws, register=register)
        for change in model_changes:
            report.change(change)
        if API in services:
            with report.step("Starting the API..."):
                stack.start(settings, api_service(settings, sdk))
        if CONSOLE in services:
            with report.step("Starting the lab console..."):
                stack.start(settings, console_service(settings, sdk))
        if mlflow is not None:
            with report.step("Waiting for the mlflow tracking server..."):
                stack.wait_healthy(settings, mlflow, mlflow_pid, timeout=120)
        if sagemaker_service is not None:
            with report.step("Waiting for the lab's SageMaker..."):
                stack.wait_healthy(settings, sagemaker_service, sagemaker_pid, timeout=60)
        env_file = write_env_file(settings) if embedded else None
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
        logged = training.train_and_log(settings, rows=rows, seed=42)
        check = not settings.mlflow_external  # checked here before logging: not loaded back from a server not ours
        promotion = registry.promote(settings, aws, logged.version, name=logged.name, check=check)
        return [Change("model version", f"{logged.name} {logged.version}", "created", "registered"), promotion.change]
    changes = []
    if not settings.model_path.exists():
        from mlops_lab.train import train_and_export  # sklearn/pandas load only when training

        result = train_and_export(None, settings.model_path, rows=rows, seed=42)
        changes.append(Change("model", str(settings.model_path), "created", f"ROC AUC {result.metrics['roc_auc']:.3f}"))
    changes.append(model.publish(settings, aws, settings.model_path.read_bytes()))
    return changes


# -- the demo's steps ---------------------------------------------------------------------------------------------


def register_demo_model(lab: Lab) -> tuple[training.LoggedVersion, registry.Promotion]:
    """Train on generated rows (a new seed each time), log and register the run as a new version, promote it."""
    logged = training.train_and_log(lab.settings, rows=20000, seed=int(time.time()) % 1000, run_name="demo")
    check = not lab.settings.mlflow_external  # as in ensure_model: checked here before logging
    return logged, registry.promote(lab.settings, lab.aws, logged.version, name=logged.name, check=check)


def write_sample(settings: Settings, rows: int, *, seed: int = 7) -> tuple[Path, dict]:
    """``rows`` generated rows (no label) as a CSV under the state dir; the path and the first row as a record."""
    from mlops_lab.data import write_csv
    from mlops_lab.synthetic import generate

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
