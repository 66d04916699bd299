"""Helpers of the API tests: a model of each kind as a test case, a model source, and onnxruntime's own answers to
check the API's against. The models are the model zoo's (tests/model_zoo.py); fixtures are in conftest.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.model_zoo import diabetes, iris


def ort_outputs(path: Path, matrix: np.ndarray) -> list:
    """What onnxruntime itself gives for these rows: the reference the API's answers are checked against."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: matrix.astype(np.float32)})


def as_records(names: list[str], matrix: np.ndarray) -> list[dict[str, float]]:
    """Rows of a float32 matrix as JSON records (float32 -> Python float is exact: the API casts back exactly)."""
    return [dict(zip(names, row, strict=True)) for row in matrix.astype(np.float32).tolist()]


@dataclass(frozen=True)
class ModelCase:
    """A model of one kind, the rows to score with it, and what the API must say about it."""

    id: str
    path: Path
    kind: str  # "classifier" or "regressor"
    features: list[str]  # its column names, in model order
    rows: np.ndarray  # float32, one row per record
    identity: dict[str, str]  # {"name", "version"} from its ONNX metadata
    classes: list[str]  # its probability columns' classes (empty: none)

    @property
    def records(self) -> list[dict[str, float]]:
        return as_records(self.features, self.rows)

    def onnxruntime_rows(self, rows: np.ndarray | None = None) -> list[dict[str, Any]]:
        """onnxruntime's own answer for ``rows`` (default: all), in the API's row shapes."""
        outputs = ort_outputs(self.path, self.rows if rows is None else rows)
        first = np.asarray(outputs[0]).reshape(-1).tolist()
        if self.kind == "regressor":
            return [{"prediction": value} for value in first]
        if len(outputs) == 1:
            return [{"label": str(label)} for label in first]
        probabilities = outputs[1]
        if isinstance(probabilities, list):  # a ZipMap: one dict per row
            probabilities = [[row[_zipmap_key(row, c)] for c in self.classes] for row in probabilities]
        return [
            {"label": str(label), "probabilities": dict(zip(self.classes, map(float, probs), strict=True))}
            for label, probs in zip(first, np.asarray(probabilities).tolist(), strict=True)
        ]


def _zipmap_key(row: dict, name: str) -> Any:
    return name if name in row else int(name)


def model_case(kind: str, path: Path) -> ModelCase:
    """The ``ModelCase`` of a model the conftest builds: ``regressor``, ``iris``, ``iris-zipmap`` or ``label-only``."""
    if kind == "regressor":
        names, x, _ = diabetes()
        return ModelCase(kind, path, "regressor", names, x[::25], {"name": "diabetes-regressor", "version": "7"}, [])
    names, x, _, species = iris()
    rows = x[::8]  # 19 rows, all three species
    if kind == "iris":
        return ModelCase(kind, path, "classifier", names, rows, {"name": "iris", "version": "3"}, ["0", "1", "2"])
    if kind == "iris-zipmap":
        return ModelCase(kind, path, "classifier", names, rows, {"name": "iris", "version": "3"}, species)
    assert kind == "label-only", kind
    return ModelCase(kind, path, "classifier", names, rows, {"name": "iris-labels", "version": "4"}, [])


class StaticSource:
    """A model source that says what the model's name and version are (as the S3 object's metadata or the registry
    do), serving a file."""

    def __init__(self, path: Path, *, name: str | None = None, version: str | None = None) -> None:
        self.path, self.name, self.version = path, name, version
        self.uri = f"static:{path}"

    def fingerprint(self) -> str:
        return "static"

    def fetch(self) -> Any:
        from mlops_lab.api.model_store import Artifact

        return Artifact(self.path.read_bytes(), "static", self.version, self.name)
