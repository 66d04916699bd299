"""Errors a person can act on: one line, a distinct exit code, a traceback only with --debug (no server needed)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from typer.testing import CliRunner

from mlops_lab import __version__, jobs, recovery, registry, services
from mlops_lab.cli import app
from mlops_lab.errors import ExitCode, LabError, explain
from mlops_lab.settings import get_settings
from tests.support import isolated_environment, lab_settings

runner = CliRunner()


@pytest.fixture
def nothing_running(tmp_path: Path) -> Iterator[Path]:
    """The CLI pointed at a lab that is not running (the lab factory's settings: an empty state dir, every port a
    free one); its state dir."""
    with isolated_environment(lab_settings(tmp_path), MLFLOW_TRACKING_URI=None):
        yield tmp_path


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
        (_client_error("BucketAlreadyExists", "CreateBucket"), ExitCode.CONFLICT, "LAB_PREFIX"),
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


# -- every expected failure carries its code ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_FAILURES_OUTSIDE_THE_CLI = {
    # HTTP-only: the API and the console answer these with a status code; no command ever sees them.
    "mlops_lab.api.payloads.PayloadError",
    "mlops_lab.console.security.Refused",
}


def _library_exceptions() -> list[type[BaseException]]:
    """Every exception class the library defines (its modules imported, then found by walking the class tree)."""
    import importlib
    import pkgutil

    import mlops_lab

    for module in pkgutil.walk_packages(mlops_lab.__path__, "mlops_lab."):
        if not module.name.endswith(".__main__"):  # those run a program when imported
            importlib.import_module(module.name)

    def subclasses(cls: type[BaseException]) -> list[type[BaseException]]:
        return [cls, *(sub for direct in cls.__subclasses__() for sub in subclasses(direct))]

    return sorted(
        {cls for cls in subclasses(BaseException) if cls.__module__.startswith("mlops_lab.")},
        key=lambda cls: f"{cls.__module__}.{cls.__qualname__}",
    )


def test_every_exception_of_the_library_carries_its_exit_code() -> None:
    """17 classes once had no code and fell through to "a bug, exit 70"; now each says its own code."""
    found = _library_exceptions()
    assert len(found) >= 17, [cls.__name__ for cls in found]
    without = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in found
        if f"{cls.__module__}.{cls.__qualname__}" not in EXPECTED_FAILURES_OUTSIDE_THE_CLI
        and getattr(cls, "exit_code", None) not in set(ExitCode) - {ExitCode.OK, ExitCode.UNEXPECTED}
    ]
    assert without == []


def test_the_exit_code_table_lists_every_code() -> None:
    table = (ROOT / "docs" / "errors.md").read_text()
    listed = {int(number) for number in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    assert listed == {int(code) for code in ExitCode} - {0}


def test_the_cli_holds_no_exit_numbers_of_its_own() -> None:
    literal = re.compile(r"(typer\.Exit|SystemExit|sys\.exit)\(\s*\d")
    found = [
        f"{path.name}:{number}"
        for path in sorted((ROOT / "src" / "mlops_lab" / "cli").glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert found == []
