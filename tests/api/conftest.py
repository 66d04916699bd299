"""Fixtures for the API tests: small models built here (always), the course model (when ../shared has it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.support import (
    COURSE_MODEL,
    Server,
    build_iris,
    build_label_only,
    build_model,
    build_regressor,
    model_case,
)
from tests.support import free_port


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-models")


@pytest.fixture(scope="session")
def small_model(models_dir: Path) -> Path:
    return build_model(models_dir / "small-v1.onnx", seed=0, version="1")


@pytest.fixture(scope="session")
def small_model_v2(models_dir: Path) -> Path:
    return build_model(models_dir / "small-v2.onnx", seed=1, version="2")


@pytest.fixture(scope="session")
def regressor_model(models_dir: Path) -> Path:
    """diabetes-regressor version 7: one [None, 10] float input, named by its metadata; one numeric output."""
    return build_regressor(models_dir / "diabetes.onnx")


@pytest.fixture(scope="session")
def iris_model(models_dir: Path) -> Path:
    """iris version 3: multi-class on one [None, 4] float input; integer labels, probabilities as a tensor."""
    return build_iris(models_dir / "iris.onnx", zipmap=False)


@pytest.fixture(scope="session")
def iris_zipmap_model(models_dir: Path) -> Path:
    """iris version 3 with species names for labels and its probabilities as a ZipMap."""
    return build_iris(models_dir / "iris-zipmap.onnx", zipmap=True, string_labels=True)


@pytest.fixture(scope="session")
def label_only_model(models_dir: Path) -> Path:
    """iris-labels version 4: species names, no probability output."""
    return build_label_only(models_dir / "iris-labels.onnx")


MODEL_KINDS = {
    "regressor": "regressor_model",
    "iris": "iris_model",
    "iris-zipmap": "iris_zipmap_model",
    "label-only": "label_only_model",
}


@pytest.fixture(params=list(MODEL_KINDS))
def case(request: pytest.FixtureRequest):
    """Each kind of model the API serves besides the lab's own (a ``support.ModelCase``): a regressor, a multi-class
    classifier (probabilities as a tensor, as a ZipMap), a classifier giving labels only."""
    return model_case(request.param, request.getfixturevalue(MODEL_KINDS[request.param]))


@pytest.fixture(scope="session")
def course_model() -> Path:
    if not COURSE_MODEL.exists():
        pytest.skip(f"course model not found at {COURSE_MODEL}")
    return COURSE_MODEL


@pytest.fixture
def record() -> dict:
    return {"age": 45, "hours_per_week": 50, "score": 0.5, "work_class": "Private", "sex": "Male"}


@pytest.fixture
def model_file(tmp_path: Path, small_model: Path) -> Path:
    """A private copy of the small model, so a test may replace it."""
    target = tmp_path / "model.onnx"
    shutil.copyfile(small_model, target)
    return target


@pytest.fixture
def settings_factory(monkeypatch: pytest.MonkeyPatch):
    from mlops_lab.settings import Settings

    for name in list(os.environ):
        if name.startswith("LAB_"):
            monkeypatch.delenv(name)

    def make(**overrides) -> Settings:
        overrides.setdefault("api_model_poll_s", 0)
        overrides.setdefault("api_access_log", False)
        return Settings(_env_file=None, **overrides)

    return make


@pytest.fixture
def make_client(settings_factory, small_model: Path):
    """``make_client(source=..., **settings)`` → a started TestClient (lifespan ran: the model is loaded)."""
    from fastapi.testclient import TestClient

    from mlops_lab.api.app import create_app

    clients = []

    def make(source=None, **overrides) -> TestClient:
        app = create_app(settings_factory(**overrides), model_source=source if source is not None else small_model)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# -- a real server -------------------------------------------------------------------------------------------------


@pytest.fixture
def live_server(tmp_path: Path, model_file: Path) -> Iterator[Server]:
    """``python -m mlops_lab.api`` on a free loopback port, serving ``model_file`` and polling it every 0.2 s."""
    port = free_port()
    log = tmp_path / "api.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env |= {"LAB_API_MODEL_POLL_S": "0.2", "LAB_API_KEY": "sekrit", "LAB_API_MAX_ROWS": "50"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlops_lab.api",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--model-source",
                str(model_file),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in 30 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield Server(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
