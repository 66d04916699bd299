"""Helpers of the API tests: the small models they build, and a running server's handle. Fixtures are in conftest.py.

Besides the lab-like binary classifier (``build_model``), models of the other kinds the API serves, all on one 2-D
float tensor named by the ``feature_names`` metadata: a regressor (``build_regressor``, sklearn's diabetes data), a
multi-class classifier (``build_iris``, with or without ZipMap) and a classifier that gives labels only
(``build_label_only``).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import COURSE_DIR

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


def _save(onx, path: Path, props: dict[str, str]) -> Path:
    import onnx

    onnx.helper.set_model_props(onx, {p.key: p.value for p in onx.metadata_props} | props)
    onnx.checker.check_model(onx)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


def diabetes() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(feature names, X as float32, y) of sklearn's bundled diabetes data."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    return list(data.feature_names), data.data.astype(np.float32), data.target


def iris() -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(feature names, X as float32, y as 0..2, class names) of sklearn's bundled iris data."""
    from sklearn.datasets import load_iris

    data = load_iris()
    return list(data.feature_names), data.data.astype(np.float32), data.target, [str(n) for n in data.target_names]


def build_regressor(path: Path, *, name: str = "diabetes-regressor", version: str = "7") -> Path:
    """A linear regression on diabetes: one FloatTensorType([None, 10]) input, one [None, 1] output; the column names,
    its name and its version in the ONNX metadata (no ``kind``: a single numeric output is a regressor)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LinearRegression

    names, x, y = diabetes()
    onx = to_onnx(LinearRegression().fit(x, y), initial_types=[("X", FloatTensorType([None, len(names)]))])
    return _save(onx, path, {"feature_names": json.dumps(names), "model_name": name, "version": version})


def build_iris(path: Path, *, zipmap: bool, string_labels: bool = False, version: str = "3") -> Path:
    """A multi-class logistic regression on iris: one FloatTensorType([None, 4]) input; a label tensor then
    probabilities as a tensor (``zipmap=False``) or a ZipMap. Integer labels 0..2, or iris' species names."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    names, x, y, species = iris()
    target = np.array(species)[y] if string_labels else y
    clf = LogisticRegression(max_iter=1000).fit(x, target)
    onx = to_onnx(
        clf,
        initial_types=[("X", FloatTensorType([None, len(names)]))],
        options={id(clf): {"zipmap": zipmap}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return _save(onx, path, {"feature_names": json.dumps(names), "model_name": "iris", "version": version})


def build_label_only(path: Path) -> Path:
    """The iris classifier (string labels) with its probability output dropped from the graph: labels only."""
    import onnx

    onx = onnx.load(build_iris(path, zipmap=False, string_labels=True, version="4"))
    probabilities = onx.graph.output[1]
    onx.graph.output.remove(probabilities)
    return _save(onx, path, {"model_name": "iris-labels"})


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


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path) -> None:
        self.url, self.process, self.log = url, process, log
