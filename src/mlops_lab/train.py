"""Train the income classifier, export it to ONNX, and refuse an export that does not score like the pipeline.

The exported model keeps the course model's input contract (one [None, 1] input per column, course column names)
so every CSV the course model accepted is accepted by ours, and carries in its metadata what the inference core and
a reviewer need: class order, per-column vocabularies, name, training time and rows, metrics, data provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
from pandas.api.types import is_numeric_dtype
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from mlops_lab.data import CATEGORICAL, CATEGORIES, FEATURES, LABEL, NUMERIC, load_training_csv
from mlops_lab.errors import Refused
from mlops_lab.inference import TabularModel
from mlops_lab.settings import get_settings
from mlops_lab.synthetic import generate

# skl2onnx's string Imputer only matches a string marker, not NaN, so missing categoricals are fed to the
# pipeline as "" (see _features). Callers of the exported model never send it: the inference core rejects any
# value outside the model's vocabulary, "" included.
MISSING_CATEGORY = ""

# Opsets onnxruntime 1.32 runs and skl2onnx 1.20 writes; ai.onnx.ml 3 is the last with TreeEnsembleClassifier.
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}


@dataclass
class TrainResult:
    pipeline: Pipeline
    metrics: dict[str, float | int]  # accuracy, roc_auc, f1 (of ">50K"), rows_train, rows_holdout
    holdout: pd.DataFrame  # the held-out rows (features + label), as given to ``train``


@dataclass(frozen=True)
class AgreementReport:
    rows: int  # rows compared (holdout rows with every categorical present)
    label_agreement: float  # share of rows where ONNX and sklearn predict the same label
    disagreeing_rows: int
    max_probability_diff: float  # max |p_onnx - p_sklearn| over rows and classes
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.disagreeing_rows == 0 and self.max_probability_diff <= self.tolerance


class AgreementError(Refused):
    """The ONNX export does not score like the sklearn pipeline it was made from."""

    def __init__(self, report: AgreementReport) -> None:
        super().__init__(
            f"ONNX model disagrees with the sklearn pipeline on {report.rows} holdout rows:"
            f" {report.disagreeing_rows} different labels (agreement {report.label_agreement:.6f}),"
            f" max |probability difference| {report.max_probability_diff:.3g} (tolerance {report.tolerance:g})"
        )
        self.report = report


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sha256: str  # of the .onnx file
    size_bytes: int
    metrics: dict[str, float | int]
    agreement: AgreementReport
    data_sha256: str  # provenance of the training rows (see data_fingerprint)


# -- training ---------------------------------------------------------------------------------------------------


def build_pipeline(seed: int = 42) -> Pipeline:
    """Impute numerics, impute + one-hot categoricals, then a random forest.

    No StandardScaler on the numerics, on purpose: trees are invariant to it, and it breaks ONNX parity. The
    numerics are integers, so a split between ages 35 and 37 (no 36 in that node) lands exactly on the scaled 36;
    sklearn scales by dividing in float64, ONNX by multiplying with a float32 reciprocal, and the one-ulp
    difference sends a 36 down different branches. Measured on 100k generated rows: 3-4 flipped labels and ~2-3%
    of rows with probabilities off by more than 1e-4, with or without float32 casts or skl2onnx's ``div_cast``.
    Unscaled, inputs and thresholds (midpoints of integers) are exact in float32, and both sides agree to ~3e-7.

    The one-hot vocabularies are the schema's, not whatever the training rows happen to contain, so every model
    accepts the full course vocabulary (a rare country missing from a sample would otherwise become a rejected
    input). Forest size is capped so the ONNX file stays small.
    """
    numeric = SimpleImputer(strategy="median")
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent", missing_values=MISSING_CATEGORY)),
            (
                "onehot",
                OneHotEncoder(
                    categories=[list(CATEGORIES[c]) for c in CATEGORICAL],
                    handle_unknown="ignore",
                    sparse_output=False,
                ),
            ),
        ]
    )
    preprocess = ColumnTransformer(
        [("numeric", numeric, list(NUMERIC)), ("categorical", categorical, list(CATEGORICAL))]
    )
    classifier = RandomForestClassifier(n_estimators=100, max_depth=12, min_samples_leaf=5, n_jobs=2, random_state=seed)
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def train(df: pd.DataFrame, seed: int = 42, holdout: float = 0.2) -> TrainResult:
    """Fit ``build_pipeline(seed)`` on a stratified ``1 - holdout`` share of ``df`` and score it on the rest."""
    train_rows, holdout_rows = train_test_split(df, test_size=holdout, random_state=seed, stratify=df[LABEL])
    pipeline = build_pipeline(seed)
    pipeline.fit(_features(train_rows), train_rows[LABEL].to_numpy(dtype=str))
    X_holdout, y_holdout = _features(holdout_rows), holdout_rows[LABEL].to_numpy(dtype=str)
    positive = pipeline.classes_[1]
    probabilities = pipeline.predict_proba(X_holdout)[:, 1]
    predicted = pipeline.predict(X_holdout)
    metrics: dict[str, float | int] = {
        "accuracy": float(accuracy_score(y_holdout, predicted)),
        "roc_auc": float(roc_auc_score(y_holdout == positive, probabilities)),
        "f1": float(f1_score(y_holdout, predicted, pos_label=positive)),
        "rows_train": len(train_rows),
        "rows_holdout": len(holdout_rows),
    }
    return TrainResult(pipeline, metrics, holdout_rows)


def _features(df: pd.DataFrame) -> pd.DataFrame:
    """The pipeline's input: ``FEATURES`` columns, numerics as float, missing categoricals as ``MISSING_CATEGORY``."""
    X = df[list(FEATURES)].copy()
    X[list(NUMERIC)] = X[list(NUMERIC)].astype(np.float64)
    for column in CATEGORICAL:
        X[column] = X[column].astype(object).where(X[column].notna(), MISSING_CATEGORY)
    return X


# -- export -----------------------------------------------------------------------------------------------------


def to_onnx(pipeline: Pipeline, df_example: pd.DataFrame, *, metadata: Mapping[str, Any] | None = None) -> bytes:
    """Export a fitted pipeline as ONNX: one [None, 1] input per column, probabilities as a tensor.

    Numeric inputs are float32 (so a missing value can arrive as NaN and be imputed in the graph; the inference
    core casts CSV text to whatever type the model declares). Column types come from ``df_example``. Metadata gets
    ``classes``, ``categories``, ``model_name`` and ``trained_at``, plus ``metadata`` (non-strings JSON-encoded).
    """
    initial_types = [
        (name, FloatTensorType([None, 1]) if is_numeric_dtype(df_example[name]) else StringTensorType([None, 1]))
        for name in pipeline.feature_names_in_
    ]
    classifier = pipeline.steps[-1][1]
    model = convert_sklearn(
        pipeline,
        initial_types=initial_types,
        options={id(classifier): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    preprocess: ColumnTransformer = pipeline.named_steps["preprocess"]
    encoder: OneHotEncoder = preprocess.named_transformers_["categorical"].named_steps["onehot"]
    categorical_columns = preprocess.transformers_[1][2]
    properties: dict[str, Any] = {
        "classes": json.dumps([str(c) for c in classifier.classes_]),
        "categories": json.dumps(
            {
                name: sorted(map(str, values))
                for name, values in zip(categorical_columns, encoder.categories_, strict=True)
            }
        ),
        "model_name": get_settings().model_name,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **(metadata or {}),
    }
    onnx.helper.set_model_props(
        model, {key: value if isinstance(value, str) else json.dumps(value) for key, value in properties.items()}
    )
    return model.SerializeToString()


def check_agreement(
    pipeline: Pipeline, onnx_bytes: bytes, holdout_df: pd.DataFrame, tolerance: float = 1e-4
) -> AgreementReport:
    """Score ``holdout_df`` with the pipeline and with the ONNX model as served; raise AgreementError on a mismatch.

    The ONNX side goes through ``TabularModel`` fed the columns as text, exactly as a CSV reaches the Lambda, so the
    check covers the serving path's casting too. Rows with a missing categorical are skipped: the serving path
    rejects them by design.
    """
    rows = holdout_df[holdout_df[list(CATEGORICAL)].notna().all(axis=1)]
    if rows.empty:
        raise ValueError("no holdout rows to compare (every row has a missing categorical)")
    model = TabularModel(onnx_bytes)
    served = model.predict({column: rows[column].astype(str).tolist() for column in model.feature_names})
    X = _features(rows)
    expected_probabilities = pipeline.predict_proba(X)
    expected_labels = pipeline.predict(X).astype(str)
    # Align the probability columns by class name, should the model order them differently.
    order = [list(map(str, pipeline.classes_)).index(name) for name in served.classes]
    differences = np.abs(served.probabilities.astype(np.float64) - expected_probabilities[:, order])
    disagreeing = int((served.labels.astype(str) != expected_labels).sum())
    report = AgreementReport(
        rows=len(rows),
        label_agreement=1.0 - disagreeing / len(rows),
        disagreeing_rows=disagreeing,
        max_probability_diff=float(differences.max()),
        tolerance=tolerance,
    )
    if not report.ok:
        raise AgreementError(report)
    return report


# -- the whole job ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedModel:
    """One training job's outcome: the fitted pipeline and its ONNX export, checked to agree on the holdout."""

    result: TrainResult
    onnx_bytes: bytes
    agreement: AgreementReport
    source: str  # the data file's name, or how the rows were generated
    data_sha256: str
    rows: int


def train_verified(data_path: Path | None, rows: int = 20000, seed: int = 42) -> VerifiedModel:
    """Load ``data_path`` (or generate ``rows`` rows with ``seed``), train, export to ONNX, and check agreement
    (AgreementError on a mismatch)."""
    if data_path is None:
        df = generate(rows, seed=seed)
        source = f"generated(rows={rows}, seed={seed})"
    else:
        df = load_training_csv(data_path)
        source = Path(data_path).name
    result = train(df, seed=seed)
    data_sha256 = data_fingerprint(df)
    onnx_bytes = to_onnx(
        result.pipeline,
        df,
        metadata={
            "training_rows": str(result.metrics["rows_train"]),
            "metrics": result.metrics,
            "training_data": source,
            "sha256_of_training_data": data_sha256,
            "seed": str(seed),
        },
    )
    agreement = check_agreement(result.pipeline, onnx_bytes, result.holdout)
    return VerifiedModel(result, onnx_bytes, agreement, source, data_sha256, len(df))


def train_and_export(data_path: Path | None, out_path: Path, rows: int = 20000, seed: int = 42) -> ExportResult:
    """``train_verified``, then write ``out_path``.

    Nothing is written unless the ONNX model agrees with the pipeline on the holdout (AgreementError otherwise);
    the file is replaced atomically, so a reader never sees half a model.
    """
    verified = train_verified(data_path, rows=rows, seed=seed)
    write_atomically(out_path, verified.onnx_bytes)
    return ExportResult(
        path=out_path,
        sha256=hashlib.sha256(verified.onnx_bytes).hexdigest(),
        size_bytes=len(verified.onnx_bytes),
        metrics=verified.result.metrics,
        agreement=verified.agreement,
        data_sha256=verified.data_sha256,
    )


def data_fingerprint(df: pd.DataFrame) -> str:
    """sha256 over pandas' per-row hashes of a frame (values, dtypes and row order; not the index)."""
    hashes = pd.util.hash_pandas_object(df, index=False).to_numpy()
    return hashlib.sha256(hashes.tobytes()).hexdigest()


def write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
