"""The CLI as a user runs it: against the session's emulator, and `up`/`down` on a stack of its own."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mlops_lab import emulator, model, ops, services, stack
from mlops_lab.cli import app
from mlops_lab.contract import prediction_key
from mlops_lab.settings import get_settings
from tests.support import Lab, isolated_environment, lab_settings

runner = CliRunner()
# A user's shell before `source .lab/env.sh`: none of the SDK variables lab_stack sets for this process.
NO_SDK_CONFIGURATION: dict[str, str | None] = dict.fromkeys(
    (
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
    )
)


@pytest.fixture
def own_stack_env(tmp_path: Path, trained_model_path: Path) -> Iterator[Path]:
    """The CLI pointed at a stack of the test's own (the lab factory's settings: a fresh state dir, free ports), with
    the session's trained model in place so `up` publishes it instead of training; the environment as it was
    afterwards. Its state dir."""
    settings = lab_settings(tmp_path / "lab", prefix="cli-own")
    settings.model_path.parent.mkdir(parents=True)
    shutil.copyfile(trained_model_path, settings.model_path)
    with isolated_environment(settings, **NO_SDK_CONFIGURATION):
        try:
            yield settings.state_dir
        finally:
            services.stop_services(settings)


def _row(output: str, service: str) -> str:
    """The status table's row of ``service``."""
    return next(line for line in output.splitlines() if re.match(rf"\W*{re.escape(service)}\s", line))


def _healthy(row: str) -> bool:
    return re.search(r"(?<![\w/])healthy \(pid \d+\)", row) is not None  # not "starting/unhealthy (pid …)"


def test_help_lists_the_pipeline_steps() -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert set(commands) == {
        "up",
        "down",
        "status",
        "env",
        "install-emulator",
        "demo",
        "bootstrap",
        "teardown",
        "plan",
        "build-layer",
        "train",
        "promote",
        "models",
        "publish",
        "predict",
        "failures",
        "redrive",
        "reconcile",
        "reset",
        "jobs",
        "transform",
        "transform-status",
        "logs",
        "export",
        "image",
        "deploy",
    }
    assert set(commands["image"].commands) == {"push"} and set(commands["deploy"].commands) == {"sagemaker"}
    listed = runner.invoke(app, ["--help"]).output
    assert all(re.search(rf"│ {re.escape(name)}\s", listed) for name in commands), listed


def test_bootstrap_again_says_nothing_to_change(cli_env: None) -> None:
    result = runner.invoke(app, ["bootstrap"])
    assert result.exit_code == 0, result.output
    assert "Nothing to change" in result.output, result.output
    assert not re.search(r"^\s*(created|updated|published)\s", result.output, re.MULTILINE), result.output


def test_predict_summarises_the_output(cli_env: None, sample_csv: Path) -> None:
    result = runner.invoke(app, ["predict", str(sample_csv), "--key", "cli/sample.csv", "--timeout", "120"])
    assert result.exit_code == 0, result.output
    assert "500 rows scored" in result.output
    assert prediction_key("cli/sample.csv") in result.output


def test_predict_reports_rejected_input(cli_env: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("age,sex\n39,Male\n")
    result = runner.invoke(app, ["predict", str(bad), "--key", "cli/bad.csv", "--timeout", "120"])
    assert result.exit_code == 1
    assert "Rejected" in result.output and "missing columns" in result.output


def test_status_shows_the_emulator_healthy_and_the_rest_stopped(cli_env: None, lab_stack: Lab) -> None:
    result = runner.invoke(app, ["status"])
    # Whether the session's mlflow runs or not (it shares this state dir): the exit code is the library's verdict on
    # what status shows (tests/test_errors.py checks the verdicts).
    assert result.exit_code == services.lab_health(services.service_states(get_settings())).code, result.output
    assert _healthy(_row(result.output, "emulator")), result.output
    assert "stopped" in _row(result.output, "api") and not _healthy(_row(result.output, "api")), result.output
    live = model.live_name(lab_stack.settings, lab_stack.aws)
    assert live and f"live model: {live}" in result.output, result.output  # the served model under its own name


def test_predict_missing_file_is_a_usage_error() -> None:
    result = runner.invoke(app, ["predict", "/nonexistent.csv"])
    assert result.exit_code == 2


def test_build_layer_builds_the_emulator_target(cli_env: None) -> None:
    result = runner.invoke(app, ["build-layer"])
    assert result.exit_code == 0, result.output
    path = Path(result.output.split()[0])
    assert path.is_file() and path.suffix == ".zip"
    assert "stored (emulator only" in result.output  # the embedded emulator's own interpreter, not AWS's


def test_train_without_mlflow_exports_a_model_and_publishes_nothing(lab_stack: Lab, tmp_path: Path) -> None:
    from mlops_lab.inference import TabularModel

    before = lab_stack.s3().head_object(Bucket=lab_stack.settings.model_bucket, Key=lab_stack.settings.model_key)
    with isolated_environment(lab_stack.settings.model_copy(update={"state_dir": tmp_path})):
        result = runner.invoke(app, ["train", "--rows", "2000", "--no-mlflow", "--no-publish"])
    assert result.exit_code == 0, result.output
    assert re.search(r"roc_auc 0\.\d{3}", result.output), result.output
    assert TabularModel(tmp_path / "models" / "model.onnx").classes == ("<=50K", ">50K")
    after = lab_stack.s3().head_object(Bucket=lab_stack.settings.model_bucket, Key=lab_stack.settings.model_key)
    assert after["ETag"] == before["ETag"]


def test_image_push_without_an_engine_says_what_is_missing(
    cli_env: None, lab_stack: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlops_lab import image

    def no_engine() -> str:
        raise image.EngineMissing("no Docker engine answers (`docker info` failed): install and start one")

    monkeypatch.setattr(image, "docker_cli", no_engine)
    result = runner.invoke(app, ["image", "push"])
    assert result.exit_code == 1
    assert "Not built or pushed" in result.output and "docker info" in result.output
    repositories = lab_stack.aws.client("ecr").describe_repositories()["repositories"]
    assert lab_stack.settings.api_repository in {r["repositoryName"] for r in repositories}


def test_up_env_teardown_down_on_a_stack_of_its_own(own_stack_env: Path) -> None:
    result = runner.invoke(app, ["up", "--no-mlflow"])
    assert result.exit_code == 0, result.output
    settings = get_settings()
    assert _healthy(_row(result.output, "emulator")) and _healthy(_row(result.output, "api")), result.output
    assert "stopped" in _row(result.output, "mlflow")
    assert re.search(r"published\s+model", result.output), result.output  # the model put in place, not retrained
    assert (own_stack_env / "env.sh").read_text() == runner.invoke(app, ["env"]).stdout
    assert "export AWS_PROFILE=mlops-lab\n" in (own_stack_env / "env.sh").read_text()
    assert f"export AWS_ENDPOINT_URL={settings.emulator_url}\n" in runner.invoke(app, ["env", "--keys"]).stdout

    again = runner.invoke(app, ["up", "--no-mlflow"])
    assert again.exit_code == 0 and "Nothing to change" in again.output, again.output

    for name, value in re.findall(r"^export (\w+)=(.*)$", (own_stack_env / "env.sh").read_text(), flags=re.M):
        os.environ[name] = value  # `source .lab/env.sh`: the commands that follow talk to this stack
    removed = runner.invoke(app, ["teardown", "--yes"])
    assert removed.exit_code == 0, removed.output
    # notification, async invocation, function, layer, log group, queue, role policy, role, three buckets
    assert "11 deleted" in removed.output, removed.output
    buckets = emulator.aws(settings).client("s3").list_buckets()["Buckets"]
    assert settings.input_bucket not in {bucket["Name"] for bucket in buckets}

    stopped = runner.invoke(app, ["down"])
    assert stopped.exit_code == 0 and "Stopped: console, api, sagemaker-emulator, emulator" in stopped.output, (
        stopped.output
    )
    assert [name for name in services.SERVICES if stack.pid_of(settings, name)] == []
    assert not stack.healthy(emulator.service(settings).health_url)
    assert "`mlops-lab reset` wipes them" in stopped.output, stopped.output

    kept = [data.path for data in services.stored_data(settings)]
    assert emulator.state_dirs(settings).services in kept  # the emulator saved its state as it stopped
    refused = runner.invoke(app, ["reset"], input="n\n")
    assert refused.exit_code != 0 and all(path.exists() for path in kept), refused.output
    assert "This deletes, for good" in refused.output and str(kept[0]) in refused.output, refused.output
    wiped = runner.invoke(app, ["reset", "--yes"])
    assert wiped.exit_code == 0, wiped.output
    assert not any(path.exists() for path in kept) and services.stored_data(settings) == []
    assert "Nothing to reset" in runner.invoke(app, ["reset", "--yes"]).output


def test_up_that_fails_stops_what_it_started(own_stack_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bootstrap failure leaves no half stack: the emulator and the (already launched) mlflow server are stopped."""

    def failing_bootstrap(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("bootstrap failed on purpose")

    monkeypatch.setattr(ops, "run_bootstrap", failing_bootstrap)
    result = runner.invoke(app, ["up"])
    settings = get_settings()
    assert result.exit_code != 0
    assert "Unexpected error: RuntimeError: bootstrap failed on purpose" in result.output, result.output
    assert [name for name in services.SERVICES if stack.pid_of(settings, name)] == []
    assert not stack.healthy(emulator.service(settings).health_url)
