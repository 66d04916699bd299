"""The model zoo: every small model the tests train and export to ONNX, and the rows that go with them.

Each builder writes one ``.onnx`` file and returns its path; tests get them through the session fixtures in
tests/conftest.py and tests/api/conftest.py (built once a run), or call a builder for a file of their own.

- ``lab_classifier``: the lab's own income model (``mlops_lab.train``, the course model's input contract).
- ``columns_classifier``: a small binary classifier exported like the course model (one [N, 1] input per column,
  vocabularies and classes in its metadata), on the columns of ``make_rows``.
- ``diabetes_regressor``, ``iris_classifier`` (with or without ZipMap, integer or species labels) and
  ``label_only_classifier``: one [N, k] float tensor in, scikit-learn's bundled data. ``named=True`` writes the column
  names, the model's name and version into the ONNX metadata, as a published copy carries them; ``named=False`` is a
  bare file as a user brings one to `mlops-lab publish` (``users_iris_classifier``/``users_diabetes_regressor`` add
  a CSV of rows with named columns).
- ``tensor_classifier``: a binary classifier on one [N, 3] float tensor, no names at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# Opsets every runtime of the lab loads (the API's, the Lambda layer's, the emulator's).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

# The columns of ``columns_classifier`` and of the records ``make_rows`` makes for it.
CATEGORIES = {
    "work_class": ["Private", "Self-emp", "Gov"],
    "sex": ["Female", "Male"],
}
NUMERIC = ["age", "hours_per_week"]  # int64
FLOAT = ["score"]  # float


def make_rows(n: int, seed: int) -> dict[str, list]:
    """``n`` rows of ``columns_classifier``'s columns, column by column."""
    rng = np.random.default_rng(seed)
    return {
        "age": rng.integers(18, 90, n).tolist(),
        "hours_per_week": rng.integers(1, 99, n).tolist(),
        "score": rng.normal(0, 1, n).round(3).tolist(),
        "work_class": rng.choice(CATEGORIES["work_class"], n).tolist(),
        "sex": rng.choice(CATEGORIES["sex"], n).tolist(),
    }


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


def _save(onx: Any, path: Path, props: dict[str, str]) -> Path:
    """Check the model, add ``props`` to its metadata and write it."""
    import onnx

    onnx.helper.set_model_props(onx, {p.key: p.value for p in onx.metadata_props} | props)
    onnx.checker.check_model(onx)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


def _identity(names: list[str], name: str, version: str) -> dict[str, str]:
    return {"feature_names": json.dumps(names), "model_name": name, "version": version}


# -- the lab's kind: one input per column ------------------------------------------------------------------------------


def lab_classifier(path: Path, *, rows: int, seed: int) -> Path:
    """The lab's own model, trained on ``rows`` generated rows (``mlops_lab.train.train_and_export``)."""
    from mlops_lab.train import train_and_export

    train_and_export(None, path, rows=rows, seed=seed)
    return path


def columns_classifier(path: Path, *, seed: int = 0, version: str = "1") -> Path:
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
    onx = to_onnx(pipeline, initial_types=initial_types, options={"zipmap": False}, target_opset=TARGET_OPSET)
    props = {
        "classes": json.dumps([str(c) for c in pipeline.classes_]),
        "categories": json.dumps(CATEGORIES),
        "model_version": version,
    }
    return _save(onx, path, props)


# -- one float tensor in (scikit-learn's bundled data sets) --------------------------------------------------------------


def diabetes_regressor(path: Path, *, named: bool) -> Path:
    """A random forest on diabetes: one FloatTensorType([None, 10]) input, one [None, 1] output (a single numeric
    output: a regressor). Named: diabetes-regressor version 7."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestRegressor

    names, x, y = diabetes()
    regressor = RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0).fit(x, y)
    onx = to_onnx(regressor, initial_types=[("X", FloatTensorType([None, len(names)]))], target_opset=TARGET_OPSET)
    return _save(onx, path, _identity(names, "diabetes-regressor", "7") if named else {})


def iris_classifier(
    path: Path, *, named: bool, zipmap: bool = True, string_labels: bool = False, version: str = "3"
) -> Path:
    """A multi-class logistic regression on iris: one FloatTensorType([None, 4]) input; a label tensor, then the
    probabilities as a ZipMap or (``zipmap=False``) a tensor. Integer labels 0..2, or iris' species names.
    Named: iris version ``version``."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    names, x, y, species = iris()
    target = np.array(species)[y] if string_labels else y
    classifier = LogisticRegression(max_iter=1000).fit(x, target)
    onx = to_onnx(
        classifier,
        initial_types=[("X", FloatTensorType([None, len(names)]))],
        options={id(classifier): {"zipmap": zipmap}},
        target_opset=TARGET_OPSET,
    )
    return _save(onx, path, _identity(names, "iris", version) if named else {})


def label_only_classifier(path: Path) -> Path:
    """The named iris classifier (species labels) with its probability output dropped from the graph: labels only.
    Named: iris-labels version 4."""
    import onnx

    onx = onnx.load(iris_classifier(path, named=True, zipmap=False, string_labels=True, version="4"))
    onx.graph.output.remove(onx.graph.output[1])
    return _save(onx, path, {"model_name": "iris-labels"})


def tensor_classifier(path: Path, *, zipmap: bool, metadata: dict[str, str] | None = None) -> Path:
    """A binary logistic regression on one [None, 3] float tensor named ``input``; ``metadata`` added as is."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    onx = to_onnx(
        LogisticRegression().fit(x, y),
        initial_types=[("input", FloatTensorType([None, 3]))],
        options={"zipmap": zipmap},
        target_opset=15,
    )
    return _save(onx, path, metadata or {})


# -- a user's own model: a bare file and rows with named columns, for `mlops-lab publish` --------------------------------


def users_diabetes_regressor(folder: Path) -> tuple[Path, Path]:
    """The unnamed regressor, and 60 of its rows under diabetes' column names: (diabetes.onnx, diabetes.csv)."""
    from sklearn.datasets import load_diabetes

    model = diabetes_regressor(folder / "diabetes.onnx", named=False)
    load_diabetes(as_frame=True).data.head(60).to_csv(folder / "diabetes.csv", index=False)
    return model, folder / "diabetes.csv"


def users_iris_classifier(folder: Path) -> tuple[Path, Path]:
    """The unnamed iris classifier (ZipMap, integer labels), and 40 of its rows with named columns (sepal_length...):
    (iris.onnx, iris.csv)."""
    from sklearn.datasets import load_iris

    model = iris_classifier(folder / "iris.onnx", named=False)
    frame = load_iris(as_frame=True).data.rename(columns=lambda name: name.replace(" (cm)", "").replace(" ", "_"))
    frame.sample(40, random_state=1).to_csv(folder / "iris.csv", index=False)
    return model, folder / "iris.csv"
