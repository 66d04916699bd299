"""Errors a person can act on: one line, a distinct exit code, a traceback only with --debug (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from typer.testing import CliRunner

from mlops_lab import __version__, jobs, recovery, registry, services
from mlops_lab.cli import app
from mlops_lab.errors import ExitCode, LabError, explain
from mlops_lab.settings import get_settings
from tests.support import free_port

runner = CliRunner()


@pytest.fixture
def nothing_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings for a lab that is not running: an empty state dir, every port a free one."""
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path))
    for name in ("EMULATOR", "MLFLOW", "API", "CONSOLE"):
        monkeypatch.setenv(f"LAB_{name}_PORT", str(free_port()))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _client_error(code: str, operation: str = "HeadObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "no"}}, operation)


@pytest.mark.parametrize(
    ("error", "code", "says"),
    [
        (NoCredentialsError(), ExitCode.NO_CREDENTIALS, "source .lab/env.sh"),
        (_client_error("InvalidAccessKeyId"), ExitCode.NO_CREDENTIALS, "credentials were refused"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:4566/b"), ExitCode.NOT_RUNNING, "mlops-lab up"),
        (
            EndpointConnectionError(endpoint_url="https://s3.eu-west-1.amazonaws.com/b"),
            ExitCode.UNREACHABLE,
            "check the network",
        ),
        (_client_error("NoSuchBucket"), ExitCode.NOT_RUNNING, "mlops-lab bootstrap"),
        (_client_error("AccessDenied", "PutObject"), ExitCode.ACCESS_DENIED, "PutObject"),
        (registry.ServerUnavailable("the mlflow tracking server does not answer"), ExitCode.NOT_RUNNING, "mlflow"),
        (recovery.RecoveryError("no failure queue x"), ExitCode.NOT_RUNNING, "no failure queue"),
        (jobs.PredictTimeout("no predictions after 3 s"), ExitCode.TIMEOUT, "mlops-lab logs function"),
        (registry.RegistryError("income-classifier has no version '9'"), ExitCode.REFUSED, "Refused"),
        (LabError("custom", ExitCode.UNHEALTHY), ExitCode.UNHEALTHY, "custom"),
        (ZeroDivisionError("division by zero"), ExitCode.UNEXPECTED, "--debug"),
    ],
)
def test_each_expected_failure_is_one_line_with_its_own_code(error: Exception, code: ExitCode, says: str) -> None:
    problem = explain(error)
    assert problem.code == code
    assert says in problem.message
    assert "\n" not in problem.message and "Traceback" not in problem.message


def test_the_exit_codes_are_distinct() -> None:
    codes = [int(code) for code in ExitCode]
    assert len(codes) == len(set(codes))


def test_a_multi_line_message_is_cut_to_its_first_line() -> None:
    problem = explain(LabError("emulator exited during start-up; the end of its log:\nline 1\nline 2"))
    assert problem.message == "emulator exited during start-up; the end of its log: (more with --debug)"


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mlops-lab {__version__}"


def test_shell_completion_is_offered() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "--install-completion" in result.output, result.output


def test_status_exits_not_running_when_nothing_runs(nothing_running: Path) -> None:
    result = runner.invoke(app, ["status"])
    assert result.exit_code == ExitCode.NOT_RUNNING, result.output
    assert "mlops-lab up" in result.output


def test_status_json(nothing_running: Path) -> None:
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == ExitCode.NOT_RUNNING
    status = json.loads(result.stdout)
    assert status["ok"] is False and status["exit_code"] == ExitCode.NOT_RUNNING
    assert {s["name"] for s in status["services"]} == set(services.SERVICES)
    assert all(s["state"] == "stopped" for s in status["services"])


def test_status_is_unhealthy_when_a_started_service_does_not_answer() -> None:
    def state(name: str, pid: int | None, healthy: bool) -> services.ServiceState:
        return services.ServiceState(name, pid, healthy, "http://127.0.0.1:1", "")

    fine = [state("emulator", 10, True), state("mlflow", None, False), state("api", 11, True)]
    assert services.lab_health(fine).code == 0
    api_down = [state("emulator", 10, True), state("api", 11, False)]
    verdict = services.lab_health(api_down)
    assert verdict.code == ExitCode.UNHEALTHY and "api" in verdict.message and "mlops-lab logs api" in verdict.message
    emulator_gone = [state("emulator", None, False), state("api", 11, True)]
    assert services.lab_health(emulator_gone).code == ExitCode.UNHEALTHY
    compose = [state("emulator", None, True), state("api", None, True)]  # containers: healthy, no pid here
    assert services.lab_health(compose).code == 0


def test_a_stopped_emulator_is_one_line_and_exit_5(nothing_running: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    for name, value in {
        "AWS_ENDPOINT_URL": settings.emulator_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    result = runner.invoke(app, ["failures"])
    assert result.exit_code == ExitCode.NOT_RUNNING, result.output
    assert "does not answer" in result.output and "mlops-lab up" in result.output
    where, problem = result.output.strip().splitlines()  # where the command talks to, then one line
    assert where.startswith("Talking to emulator at") and "account unknown" in where
    assert "Traceback" not in result.output and "does not answer" in problem, result.output


def test_no_credentials_is_one_line_and_exit_3(
    nothing_running: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup
    monkeypatch.setenv("AWS_ENDPOINT_URL", get_settings().emulator_url)
    result = runner.invoke(app, ["failures"])
    assert result.exit_code == ExitCode.NO_CREDENTIALS, result.output
    assert "No AWS credentials" in result.output and "Traceback" not in result.output


def test_debug_shows_the_traceback(nothing_running: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object, **__: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(services, "service_states", boom)
    quiet = runner.invoke(app, ["status"])
    assert quiet.exit_code == ExitCode.UNEXPECTED and "Unexpected error: ZeroDivisionError: a bug" in quiet.output
    assert quiet.exception is None or isinstance(quiet.exception, SystemExit)
    loud = runner.invoke(app, ["--debug", "status"])
    assert isinstance(loud.exception, ZeroDivisionError)
