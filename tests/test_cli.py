"""The CLI as a user runs it, against the session's emulator."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlops_lab.cli import app
from mlops_lab.settings import get_settings
from tests.conftest import Lab

runner = CliRunner()


@pytest.fixture
def cli_env(lab_stack: Lab, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Point the CLI's settings at the session's stack."""
    settings = lab_stack.settings
    monkeypatch.setenv("LAB_PREFIX", settings.prefix)
    monkeypatch.setenv("LAB_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LAB_EMULATOR_PORT", str(settings.emulator_port))
    monkeypatch.setenv("LAB_MAX_INPUT_MB", str(settings.max_input_mb))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_help_lists_the_pipeline_steps() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status", "train", "bootstrap", "predict", "demo", "teardown", "build-layer"):
        assert command in result.output


def test_bootstrap_again_says_nothing_to_change(cli_env: None) -> None:
    result = runner.invoke(app, ["bootstrap"])
    assert result.exit_code == 0, result.output
    assert "Nothing to change" in result.output
    assert "created" not in result.output


def test_predict_summarises_the_output(cli_env: None, sample_csv: Path) -> None:
    result = runner.invoke(app, ["predict", str(sample_csv), "--key", "cli/sample.csv", "--timeout", "120"])
    assert result.exit_code == 0, result.output
    assert "500 rows scored" in result.output
    assert "predictions/cli/sample.csv" in result.output


def test_predict_reports_rejected_input(cli_env: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("age,sex\n39,Male\n")
    result = runner.invoke(app, ["predict", str(bad), "--key", "cli/bad.csv", "--timeout", "120"])
    assert result.exit_code == 1
    assert "Rejected" in result.output and "missing columns" in result.output


def test_status_shows_the_emulator_healthy(cli_env: None) -> None:
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0
    assert "emulator" in result.output and "healthy" in result.output


def test_predict_missing_file_is_a_usage_error() -> None:
    result = runner.invoke(app, ["predict", "/nonexistent.csv"])
    assert result.exit_code == 2


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
    repositories = lab_stack.aws.client("ecr").describe_repositories()["repositories"]  # type: ignore[attr-defined]
    assert f"{lab_stack.settings.prefix}-api" in {r["repositoryName"] for r in repositories}


def test_up_that_fails_stops_what_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bootstrap failure leaves no half stack: the emulator and the (already launched) mlflow server are stopped."""
    import os

    from mlops_lab import emulator, lab, stack
    from tests.conftest import free_port

    for name, value in {
        "LAB_STATE_DIR": str(tmp_path / "lab"),
        "LAB_PREFIX": "up-fails",
        "LAB_EMULATOR_PORT": str(free_port()),
        "LAB_MLFLOW_PORT": str(free_port()),
        "LAB_API_PORT": str(free_port()),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored afterwards: `up` points this process at its stack

    def failing_bootstrap(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("bootstrap failed on purpose")

    monkeypatch.setattr(lab, "run_bootstrap", failing_bootstrap)
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["up"])
        settings = get_settings()
        assert result.exit_code != 0
        assert "bootstrap failed on purpose" in str(result.exception)
        assert [name for name in ("emulator", "mlflow", "api") if stack.pid_of(settings, name)] == []
        assert not stack.healthy(emulator.health_url(settings))
    finally:
        lab.stop_services(get_settings())
        get_settings.cache_clear()
