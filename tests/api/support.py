"""Helpers of the API tests: the small models they build, and a running server's handle. Fixtures are in conftest.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path) -> None:
        self.url, self.process, self.log = url, process, log
