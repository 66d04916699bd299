"""Shared fixtures: the course artifacts, a trained model, the Lambda handler module, and one real embedded stack.

Fixtures and hooks only: the helpers the tests share (``Lab``, ``free_port``, ``LambdaContext``, wait helpers...) are
in tests/support.py. Every test whose fixtures start a server is marked ``integration`` here, so ``make test-unit``
(``pytest -m "not integration"``) runs the rest without any server.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from mlops_lab import emulator, ops, services, stack
from mlops_lab.settings import Settings, get_settings
from tests.support import COURSE_DIR, HANDLER_PATH, REPORTED, Lab, LambdaContext, free_port

# Fixtures that start a server (an emulator, mlflow, the API, moto) for the tests that use them, directly or through
# another fixture. A test whose fixture closure holds one of these is an integration test.
SERVER_FIXTURES = frozenset(
    {
        "lab_stack",  # MiniStack, bootstrapped (here)
        "mlflow_lab",  # mlflow's tracking server (here)
        "live_server",  # `python -m mlops_lab.api` (tests/api/conftest.py)
        "moto_url",  # moto's threaded server for SageMaker's control plane (tests/test_sagemaker.py)
        "api",  # the API as `up` runs it (tests/test_registry.py; it uses mlflow_lab too)
        "console_server",  # the lab console as `up` runs it (tests/console/conftest.py)
        "own_stack_env",
        "durable_lab",  # a stack of its own that the test stops, kills and restarts (tests/test_durability.py)  # settings for a stack the test brings up itself with `mlops-lab up` (tests/test_cli.py)
    }
)
# A test that starts a server in its own body, with none of these fixtures, says so itself
# (`@pytest.mark.integration`); the guard below fails it otherwise.


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVER_FIXTURES:
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the soak and fault tests measured (peak memory, how many events were recovered), in every run's log."""
    if REPORTED:
        terminalreporter.section("measured")
        for line in REPORTED:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _no_server_outside_integration_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test not marked ``integration`` may not start a stack service: it would make ``make test-unit`` slow and
    need the emulator. It fails, saying how to mark it, instead."""
    if request.node.get_closest_marker("integration"):
        yield
        return

    def refuse(_settings: object, service: object, *args: object, **kwargs: object) -> int:
        name = getattr(service, "name", service)
        raise AssertionError(
            f"{request.node.nodeid} starts the {name!r} service but is not marked integration: use a server"
            " fixture (tests/conftest.py SERVER_FIXTURES) or add @pytest.mark.integration"
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stack, "launch", refuse)
        yield


@pytest.fixture(scope="session", autouse=True)
def _aws_config_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`up` writes the emulator's profile into the AWS config file: the tests' goes to a temp file, never ~/.aws."""
    path = tmp_path_factory.mktemp("aws") / "config"
    saved = os.environ.get("AWS_CONFIG_FILE")
    os.environ["AWS_CONFIG_FILE"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("AWS_CONFIG_FILE", None)
    else:
        os.environ["AWS_CONFIG_FILE"] = saved


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
    from mlops_lab.train import train_and_export

    path = tmp_path_factory.mktemp("model") / "model.onnx"
    train_and_export(None, path, rows=6000, seed=3)
    return path


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
    """One real MiniStack server for the session, brought up by `mlops-lab up`'s own recipe on a free port.

    The developer's own ``LAB_*`` variables and ``.env`` are kept out: the session's stack is the same everywhere.
    """
    saved = dict(os.environ)
    for name in [name for name in os.environ if name.startswith("LAB_")]:
        del os.environ[name]
    settings = Settings(
        _env_file=None,
        state_dir=tmp_path_factory.mktemp("lab"),
        emulator_port=free_port(),
        prefix="lab-test",
        max_input_mb=2,  # small, so the oversized-file case needs only a few MB
    )
    # A model file in place means bring_up publishes it (as `up` does after training one) instead of training.
    settings.model_path.parent.mkdir(parents=True)
    shutil.copyfile(trained_model_path, settings.model_path)
    try:
        with ops.bring_up(settings, services=[emulator.SERVICE_NAME]) as lab:
            # The session's clients, CLI runs and the services the tests start find the emulator the SDK's way.
            os.environ.update(emulator.sdk_environment(settings))
            yield Lab(settings, lab.aws)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def mlflow_lab(lab_stack: Lab) -> Iterator[Lab]:
    """A real mlflow tracking server (sqlite backend, artifacts in the emulator's model bucket) for the session,
    brought up on the session's stack by the same recipe.

    Its settings are the session stack's plus a free mlflow port. Whatever model the session published is put back
    afterwards, so promotions made by these tests do not leak into other modules' expectations.
    """
    from mlops_lab import registry

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    settings = lab_stack.settings.model_copy(update={"mlflow_port": free_port()})
    s3 = lab_stack.s3()
    published = s3.get_object(Bucket=settings.model_bucket, Key=settings.model_key)
    original, original_metadata = published["Body"].read(), published.get("Metadata", {})
    try:
        with ops.bring_up(settings, services=[registry.SERVICE_NAME]):
            yield Lab(settings, lab_stack.aws)
    finally:
        s3.put_object(Bucket=settings.model_bucket, Key=settings.model_key, Body=original, Metadata=original_metadata)


@pytest.fixture(scope="module")
def api(mlflow_lab: Lab, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The API as `up` runs it (its own process), reading the model bucket, polling for a new model every 0.2 s."""
    settings = mlflow_lab.settings.model_copy(
        update={"api_port": free_port(), "state_dir": tmp_path_factory.mktemp("api-state")}
    )
    env = {"LAB_PREFIX": settings.prefix, "LAB_API_MODEL_POLL_S": "0.2", "LAB_API_ACCESS_LOG": "false"}
    service = services.api_service(settings)
    service = dataclasses.replace(service, env={**service.env, **env})
    stack.start(settings, service)
    try:
        with httpx.Client(base_url=service.url, timeout=10) as client:
            yield client
    finally:
        stack.stop(settings, service)


@pytest.fixture
def cli_env(lab_stack: Lab, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the CLI's settings at the session's stack."""
    settings = lab_stack.settings
    monkeypatch.setenv("LAB_PREFIX", settings.prefix)
    monkeypatch.setenv("LAB_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LAB_EMULATOR_PORT", str(settings.emulator_port))
    monkeypatch.setenv("LAB_MAX_INPUT_MB", str(settings.max_input_mb))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def live_model_put_back(lab_stack: Lab) -> Iterator[None]:
    """For a module that publishes or promotes on the session's stack: the model that was live before it is live
    again after it, so the next module finds the session's own model (what its expectations are computed from)."""
    s3, settings = lab_stack.s3(), lab_stack.settings
    published = s3.get_object(Bucket=settings.model_bucket, Key=settings.model_key)
    body, metadata = published["Body"].read(), published.get("Metadata", {})
    yield
    s3.put_object(Bucket=settings.model_bucket, Key=settings.model_key, Body=body, Metadata=metadata)


# == end of the mlflow section ===================================================================================
