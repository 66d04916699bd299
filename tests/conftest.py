"""Shared fixtures: the course artifacts, the model zoo's models, the Lambda handler module, and one real embedded
stack; and the hook that gives every test its lane.

Fixtures and hooks only: the helpers the tests share (the lab factory, ``isolated_environment``, ``running_api``,
wait helpers...) are in tests/support.py, the models in tests/model_zoo.py, the lanes in tests/lanes.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from mlops_lab import emulator, registry, stack
from tests import model_zoo
from tests.lanes import LANE_PROBLEM, UNIT, mark_lanes
from tests.support import (
    COURSE_DIR,
    HANDLER_PATH,
    REPORTED,
    Lab,
    LambdaContext,
    free_port,
    isolated_environment,
    lab_settings,
    restoring_live_model,
    running_api,
    running_lab,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_lanes(items)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test without a lane it can run in fails here, before any of its fixtures (a server, say) is set up."""
    if LANE_PROBLEM in item.stash:
        pytest.fail(item.stash[LANE_PROBLEM], pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the soak and fault tests measured (peak memory, how many events were recovered), in every run's log."""
    if REPORTED:
        terminalreporter.section("measured")
        for line in REPORTED:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _no_server_in_the_unit_lane(request: pytest.FixtureRequest) -> Iterator[None]:
    """A unit test may not start a service of the lab's: `make test-unit` would get slow and need the emulator. It
    fails, saying where its lane is declared, instead."""
    if not request.node.get_closest_marker(UNIT):
        yield
        return

    def refuse(_settings: object, service: object, *args: object, **kwargs: object) -> int:
        name = getattr(service, "name", service)
        raise AssertionError(
            f"{request.node.nodeid} starts the {name!r} service in the unit lane: give it the integration or the"
            " slow lane in tests/lanes.py"
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stack, "launch", refuse)
        yield


@pytest.fixture(scope="session", autouse=True)
def _environment_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session runs without the developer's ``LAB_*`` variables (its tests are the same everywhere) and with an
    AWS config file of its own: `up` writes the emulator's profile there, never into ~/.aws."""
    path = tmp_path_factory.mktemp("aws") / "config"
    with isolated_environment(AWS_CONFIG_FILE=str(path)):
        yield path


@pytest.fixture(scope="session")
def course_dir() -> Path:
    if not (COURSE_DIR / "model.onnx").exists():
        pytest.skip("../shared/data/course is not here")
    return COURSE_DIR


@pytest.fixture(scope="session")
def course_model_path(course_dir: Path) -> Path:
    return course_dir / "model.onnx"


@pytest.fixture(scope="session")
def course_batch_path(course_dir: Path) -> Path:
    return course_dir / "input_batch.csv"


@pytest.fixture(scope="session")
def trained_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's own model, trained on generated data (small, so the session stays fast)."""
    return model_zoo.lab_classifier(tmp_path_factory.mktemp("model") / "model.onnx", rows=6000, seed=3)


@pytest.fixture(scope="session")
def users_iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A user's own iris classifier (no names in it) and a CSV of its rows with named columns."""
    return model_zoo.users_iris_classifier(tmp_path_factory.mktemp("users-iris"))


@pytest.fixture(scope="session")
def users_diabetes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A user's own diabetes regressor (no names in it) and a CSV of its rows with named columns."""
    return model_zoo.users_diabetes_regressor(tmp_path_factory.mktemp("users-diabetes"))


@pytest.fixture(scope="session")
def sample_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlops_lab.data import write_csv
    from mlops_lab.synthetic import generate

    path = tmp_path_factory.mktemp("data") / "sample.csv"
    write_csv(generate(500, seed=11, with_label=False), path)
    return path


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


@pytest.fixture(scope="session")
def handler_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("batch_predict_handler", HANDLER_PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def lab_stack(tmp_path_factory: pytest.TempPathFactory, trained_model_path: Path) -> Iterator[Lab]:
    """One real MiniStack server for the session, brought up by `mlops-lab up`'s own recipe on a free port, serving
    the session's trained model. The session's clients, CLI runs and the services the tests start find it the SDK's
    way (its variables are set for the session)."""
    # An input limit of 2 MB: the oversized-file case needs only a few MB.
    settings = lab_settings(tmp_path_factory.mktemp("lab"), prefix="lab-test", max_input_mb=2)
    with (
        isolated_environment(MLFLOW_DISABLE_TELEMETRY="true"),
        running_lab(settings, [emulator.SERVICE_NAME], model=trained_model_path) as lab,
    ):
        os.environ.update(emulator.sdk_environment(settings))
        yield lab


@pytest.fixture(scope="session")
def mlflow_lab(lab_stack: Lab) -> Iterator[Lab]:
    """A real mlflow tracking server (sqlite backend, artifacts in the emulator's model bucket) on the session's stack,
    brought up by the same recipe. Whatever model is live before it is live again after it, so promotions made by
    these tests do not leak into other modules' expectations."""
    with restoring_live_model(lab_stack), running_lab(lab_stack.settings, [registry.SERVICE_NAME]) as lab:
        yield lab


@pytest.fixture(scope="module")
def api(mlflow_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The API as `up` runs it (its own process), reading the model bucket, polling for a new model every 0.2 s."""
    settings = mlflow_lab.settings.model_copy(
        update={
            "api_port": free_port(),
            "state_dir": tmp_path_factory.mktemp("api-state"),
            "api_model_poll_s": 0.2,
            "api_access_log": False,
        }
    )
    with running_api(settings) as running, httpx.Client(base_url=running.url, timeout=10) as client:
        yield client


@pytest.fixture
def cli_env(lab_stack: Lab) -> Iterator[None]:
    """Point the CLI's settings at the session's stack (its mlflow server's port too, whether it runs or not)."""
    with isolated_environment(lab_stack.settings):
        yield


@pytest.fixture(scope="module")
def live_model_put_back(lab_stack: Lab) -> Iterator[None]:
    """For a module that publishes or promotes on the session's stack: the model that was live before it is live
    again after it, so the next module finds the session's own model (what its expectations are computed from)."""
    with restoring_live_model(lab_stack):
        yield
