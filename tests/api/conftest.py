"""Fixtures for the API tests: the model zoo's models of every kind the API serves (tests/model_zoo.py), TestClients
on them, and the API as its image runs it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import model_zoo
from tests.api.support import model_case
from tests.support import RunningApi, lab_settings, running_api


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-models")


@pytest.fixture(scope="session")
def small_model(models_dir: Path) -> Path:
    return model_zoo.columns_classifier(models_dir / "small-v1.onnx", seed=0, version="1")


@pytest.fixture(scope="session")
def small_model_v2(models_dir: Path) -> Path:
    return model_zoo.columns_classifier(models_dir / "small-v2.onnx", seed=1, version="2")


@pytest.fixture(scope="session")
def regressor_model(models_dir: Path) -> Path:
    """diabetes-regressor version 7: one [None, 10] float input, named by its metadata; one numeric output."""
    return model_zoo.diabetes_regressor(models_dir / "diabetes.onnx", named=True)


@pytest.fixture(scope="session")
def iris_model(models_dir: Path) -> Path:
    """iris version 3: multi-class on one [None, 4] float input; integer labels, probabilities as a tensor."""
    return model_zoo.iris_classifier(models_dir / "iris.onnx", named=True, zipmap=False)


@pytest.fixture(scope="session")
def iris_zipmap_model(models_dir: Path) -> Path:
    """iris version 3 with species names for labels and its probabilities as a ZipMap."""
    return model_zoo.iris_classifier(models_dir / "iris-zipmap.onnx", named=True, zipmap=True, string_labels=True)


@pytest.fixture(scope="session")
def label_only_model(models_dir: Path) -> Path:
    """iris-labels version 4: species names, no probability output."""
    return model_zoo.label_only_classifier(models_dir / "iris-labels.onnx")


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
def settings_factory(tmp_path: Path):
    """``settings_factory(**settings)`` -> the API's settings (the lab factory's, model polling and the access log
    off unless given)."""
    from mlops_lab.settings import Settings

    def make(**overrides) -> Settings:
        overrides.setdefault("api_model_poll_s", 0)
        overrides.setdefault("api_access_log", False)
        return lab_settings(tmp_path / "lab", **overrides)

    return make


@pytest.fixture
def make_client(settings_factory, small_model: Path):
    """``make_client(source=..., environ=..., **settings)`` → a started TestClient (lifespan ran: the model is
    loaded)."""
    from fastapi.testclient import TestClient

    from mlops_lab.api.app import create_app

    clients = []

    def make(source=None, *, environ=None, **overrides) -> TestClient:
        app = create_app(
            settings_factory(**overrides),
            model_source=source if source is not None else small_model,
            environ=environ,  # None: this process's (a SageMaker container's variables, if any)
        )
        client = TestClient(app, base_url="http://127.0.0.1")  # the guard serves loopback names, not `testserver`
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# -- a real server -------------------------------------------------------------------------------------------------


@pytest.fixture
def live_server(tmp_path: Path, model_file: Path) -> Iterator[RunningApi]:
    """The API as its image runs it (``python -m mlops_lab.api``) on a free loopback port, serving ``model_file`` and
    polling it every 0.2 s, with an API key and a row limit."""
    settings = lab_settings(
        tmp_path / "lab",
        api_model_source=str(model_file),
        api_model_poll_s=0.2,
        api_key="sekrit",
        api_max_rows=50,
    )
    with running_api(settings, as_image=True) as running:
        yield running
