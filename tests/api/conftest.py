"""Fixtures for the API tests: small models built here (always), the course model (when ../shared has it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import free_port

COURSE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "course"
COURSE_MODEL = COURSE_DIR / "model.onnx"

CATEGORIES = {
    "work_class": ["Private", "Self-emp", "Gov"],
    "sex": ["Female", "Male"],
}
NUMERIC = ["age", "hours_per_week"]  # int64
FLOAT = ["score"]  # float


def make_rows(n: int, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    return {
        "age": rng.integers(18, 90, n).tolist(),
        "hours_per_week": rng.integers(1, 99, n).tolist(),
        "score": rng.normal(0, 1, n).round(3).tolist(),
        "work_class": rng.choice(CATEGORIES["work_class"], n).tolist(),
        "sex": rng.choice(CATEGORIES["sex"], n).tolist(),
    }


def build_model(path: Path, *, seed: int = 0, version: str = "1") -> Path:
    """A sklearn pipeline exported like the course model: one [None, 1] input per column, ZipMap off, vocabularies
    and class names in metadata_props."""
    import pandas as pd
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pd.DataFrame(make_rows(600, seed))
    frame["age"] = frame["age"].astype("int64")
    frame["hours_per_week"] = frame["hours_per_week"].astype("int64")
    frame["score"] = frame["score"].astype("float32")
    signal = (
        (frame["age"] > 40).astype(int) + (frame["hours_per_week"] > 45) + (frame["sex"] == "Male") + frame["score"]
    )
    target = np.where(signal + np.random.default_rng(seed).normal(0, 0.5, len(frame)) > 1.5, ">50K", "<=50K")
    pipeline = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), NUMERIC + FLOAT),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), list(CATEGORIES)),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500, random_state=seed)),
        ]
    ).fit(frame, target)
    initial_types = [(name, Int64TensorType([None, 1])) for name in NUMERIC]
    initial_types += [(name, FloatTensorType([None, 1])) for name in FLOAT]
    initial_types += [(name, StringTensorType([None, 1])) for name in CATEGORIES]
    onx = to_onnx(
        pipeline, initial_types=initial_types, options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3}
    )
    for key, value in {
        "classes": json.dumps([str(c) for c in pipeline.classes_]),
        "categories": json.dumps(CATEGORIES),
        "model_version": version,
    }.items():
        entry = onx.metadata_props.add()
        entry.key, entry.value = key, value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


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


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path) -> None:
        self.url, self.process, self.log = url, process, log


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
