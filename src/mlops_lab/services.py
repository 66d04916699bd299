"""The lab's services on this machine: their definitions, start and stop, states and health, the env file, reset.

The emulator, mlflow's tracking server, the API and the console are ``stack.Service`` definitions: a command, its
environment and a health URL. Each service gets its environment explicitly: the lab's settings as ``LAB_*`` variables
and, when the lab runs its own emulator, the SDK variables that point at it (``emulator.sdk_environment``). Nothing
here changes this process's own environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from mlops_lab import emulator, model, registry, sagemaker, stack
from mlops_lab.contract import META_MODEL_NAME, META_MODEL_VERSION
from mlops_lab.errors import ExitCode, Refused
from mlops_lab.settings import Settings, as_environment

API = "api"
CONSOLE = "console"  # the lab console (mlops_lab.console): a web page on the lab, for people
SERVICES = (emulator.SERVICE_NAME, registry.SERVICE_NAME, sagemaker.SERVICE_NAME, API, CONSOLE)  # what bring_up starts
STOP_ORDER = (CONSOLE, API, registry.SERVICE_NAME, sagemaker.SERVICE_NAME, emulator.SERVICE_NAME)  # dependants first

SdkEnvironment = Mapping[str, str]  # SDK variables a service runs with on top of this process's (none: the same AWS)


def _web_service(
    settings: Settings, sdk: SdkEnvironment, name: str, app: str, host: str, port: int, description: str
) -> stack.Service:
    """A FastAPI app of the lab's under uvicorn, with these settings (as LAB_* variables)."""
    url = f"http://{host}:{port}"
    return stack.Service(
        name=name,
        # The apps write their own access log (JSON lines), so uvicorn's is off.
        command=[sys.executable, "-m", "uvicorn", app, "--host", host, "--port", str(port), "--no-access-log"],
        health_url=url + "/health",
        # The tracking server of these settings, whatever mlflow.set_tracking_uri() left in this process's environment.
        env={**os.environ, **sdk, **as_environment(settings), "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri},
        description=description,
        url=url,
    )


def api_service(settings: Settings, sdk: SdkEnvironment = {}) -> stack.Service:  # noqa: B006 - read only
    return _web_service(
        settings,
        sdk,
        API,
        "mlops_lab.api.app:app",
        settings.api_host,
        settings.api_port,
        "FastAPI inference service (docs at /docs)",
    )


def console_service(settings: Settings, sdk: SdkEnvironment = {}) -> stack.Service:  # noqa: B006 - read only
    return _web_service(
        settings,
        sdk,
        CONSOLE,
        "mlops_lab.console.app:app",
        settings.console_host,
        settings.console_port,
        "lab console: services, models, batch jobs, upload (a web page)",
    )


def service(settings: Settings, name: str, sdk: SdkEnvironment = {}) -> stack.Service:  # noqa: B006 - read only
    """The definition of service ``name``; ``sdk``: the SDK variables it runs with (the embedded emulator's)."""
    definitions: dict[str, Callable[[Settings, SdkEnvironment], stack.Service]] = {
        emulator.SERVICE_NAME: lambda settings, _: emulator.service(settings),
        registry.SERVICE_NAME: registry.server_service,
        API: api_service,
        CONSOLE: console_service,
        sagemaker.SERVICE_NAME: lambda settings, sdk: sagemaker.emulator_service(settings, sdk or None),
    }
    return definitions[name](settings, sdk)


def stop_services(settings: Settings, names: Iterable[str] = STOP_ORDER) -> list[str]:
    """Stop the named services (default: all), dependants first; returns those that were running."""
    return [name for name in sorted(names, key=STOP_ORDER.index) if stack.stop(settings, service(settings, name))]


# -- states and health --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceState:
    name: str
    pid: int | None
    healthy: bool
    url: str
    description: str


def service_states(settings: Settings) -> list[ServiceState]:
    """Each embedded service: its pid, health, URL."""
    states = []
    for name in SERVICES:
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
    try:
        return model.published_metadata(settings, emulator.aws(settings))
    except ClientError:  # not bootstrapped yet
        return None


# -- the env file -------------------------------------------------------------------------------------------------


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


# -- reset --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredData:
    """A folder of the lab's state that `reset` deletes, what it holds, and its size."""

    path: Path
    holds: str
    bytes: int


class ResetError(Refused):
    """A reset that would leave the lab inconsistent (mlflow's database lives elsewhere)."""


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
    """Stop the embedded services and delete the emulator's state and mlflow's together; (stopped, deleted).

    Only in a state dir the lab marked as its own (``stack.STATE_MARKER``; ResetError otherwise), and not while an
    `up` runs on it (``stack.lab_lock``; LabBusy): refused before anything is stopped or deleted."""
    if settings.mlflow_backend_uri:
        raise ResetError(
            f"mlflow's database is {settings.mlflow_backend_uri}, outside {settings.state_dir}: resetting the emulator "
            "alone would leave its registry pointing at deleted artifacts. Empty that database too, or unset "
            "LAB_MLFLOW_BACKEND_URI."
        )
    if not stack.is_marked(stack.claim_state_dir(settings)):
        raise ResetError(
            f"{settings.state_dir} (LAB_STATE_DIR) has no {stack.STATE_MARKER}: the lab did not make it, so reset "
            "deletes nothing there. If it is the lab's state dir (made before the lab marked its folders), create "
            f"{settings.state_dir / stack.STATE_MARKER} and run reset again."
        )
    with stack.lab_lock(settings, "reset"):
        stopped = stop_services(settings)  # first: the emulator writes its state when it stops
        deleted = stored_data(settings)
        for data in deleted:
            stack.remove_tree(data.path, owner=settings.state_dir)
    return stopped, deleted
