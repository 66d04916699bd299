from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_lab import train as train_module
from mlops_lab.data import CATEGORIES, CLASSES, FEATURES, LABEL, NUMERIC, write_csv
from mlops_lab.inference import (
    PREDICTION_COLUMN,
    InputError,
    TabularModel,
    probability_column,
    score_csv,
    score_csv_text,
)
from mlops_lab.synthetic import generate
from mlops_lab.train import (
    AgreementError,
    TrainResult,
    check_agreement,
    to_onnx,
    train,
    train_and_export,
)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate(20_000, seed=42)


@pytest.fixture(scope="module")
def trained(frame: pd.DataFrame) -> TrainResult:
    return train(frame, seed=42)


@pytest.fixture(scope="module")
def onnx_bytes(trained: TrainResult, frame: pd.DataFrame) -> bytes:
    return to_onnx(trained.pipeline, frame, metadata={"training_rows": "16000", "metrics": trained.metrics})


@pytest.fixture(scope="module")
def model(onnx_bytes: bytes) -> TabularModel:
    return TabularModel(onnx_bytes)


def test_metrics_clear_a_floor(trained: TrainResult) -> None:
    metrics = trained.metrics
    assert metrics["roc_auc"] > 0.85
    assert metrics["accuracy"] > 0.8
    assert metrics["f1"] > 0.5
    assert (metrics["rows_train"], metrics["rows_holdout"]) == (16_000, 4_000)
    assert len(trained.holdout) == 4_000


def test_onnx_is_small_and_has_the_course_input_contract(onnx_bytes: bytes, model: TabularModel) -> None:
    assert len(onnx_bytes) < 5 * 1024 * 1024
    assert model.feature_names == list(FEATURES)
    assert model.per_column
    types = {feature.name: feature.json_type for feature in model.features}
    assert {name: types[name] for name in NUMERIC} == dict.fromkeys(NUMERIC, "number")
    assert all(types[name] == "string" for name in CATEGORIES)


def test_onnx_metadata(model: TabularModel, trained: TrainResult) -> None:
    metadata = model.metadata
    assert model.classes == tuple(json.loads(metadata["classes"])) == CLASSES
    assert json.loads(metadata["categories"]) == {name: sorted(values) for name, values in CATEGORIES.items()}
    assert metadata["model_name"] == "income-classifier"
    assert metadata["trained_at"].endswith("+00:00")
    assert json.loads(metadata["metrics"]) == trained.metrics
    assert metadata["training_rows"] == "16000"


def test_onnx_round_trip_scores_like_csv_text(model: TabularModel, trained: TrainResult) -> None:
    """Holdout rows given as text (as a CSV brings them) score as the sklearn pipeline scores the same rows, and the
    CSV path writes those very labels and probabilities."""
    rows = trained.holdout.head(50)
    prediction = model.predict({name: rows[name].astype(str).tolist() for name in FEATURES})
    assert len(prediction) == 50
    assert list(prediction.classes) == list(trained.pipeline.classes_)
    np.testing.assert_allclose(
        prediction.probabilities, trained.pipeline.predict_proba(rows[list(FEATURES)]), atol=1e-5
    )
    assert prediction.labels.tolist() == trained.pipeline.predict(rows[list(FEATURES)]).tolist()
    output, _ = score_csv_text(model, rows[list(FEATURES)].to_csv(index=False))
    scored = pd.read_csv(io.StringIO(output))
    assert scored[PREDICTION_COLUMN].tolist() == prediction.labels.tolist()
    np.testing.assert_allclose(
        scored[[probability_column(c) for c in model.classes]].to_numpy(), prediction.probabilities, atol=1e-6
    )


def test_unknown_category_is_bad_input(model: TabularModel, trained: TrainResult) -> None:
    columns = {name: trained.holdout[name].head(3).astype(str).tolist() for name in FEATURES}
    columns["education"][1] = "PhD"
    with pytest.raises(InputError, match="unknown categories in column 'education'") as caught:
        model.predict(columns)
    assert caught.value.rows == [{"row": 2, "column": "education", "value": "PhD"}]


def test_agreement_holds_on_the_holdout(trained: TrainResult, onnx_bytes: bytes) -> None:
    report = check_agreement(trained.pipeline, onnx_bytes, trained.holdout)
    assert report.ok
    assert report.rows == len(trained.holdout)
    assert report.label_agreement == 1.0 and report.disagreeing_rows == 0
    assert report.max_probability_diff < 1e-5


def test_agreement_refuses_another_pipelines_export(trained: TrainResult, trained_model_path: Path) -> None:
    """The session's lab model (other rows, another seed) is another pipeline's export."""
    with pytest.raises(AgreementError, match="max \\|probability difference\\|") as caught:
        check_agreement(trained.pipeline, trained_model_path.read_bytes(), trained.holdout)
    report = caught.value.report
    assert not report.ok and report.max_probability_diff > 1e-4


def test_missing_categoricals_are_imputed_in_training_and_skipped_by_the_check() -> None:
    rows = generate(3_000, seed=9)
    rows.loc[rows.sample(frac=0.05, random_state=0).index, "occupation"] = np.nan
    rows.loc[rows.sample(frac=0.02, random_state=1).index, "native_country"] = np.nan
    result = train(rows, seed=9)
    report = check_agreement(result.pipeline, to_onnx(result.pipeline, rows), result.holdout)
    complete = result.holdout[["occupation", "native_country"]].notna().all(axis=1).sum()
    assert report.ok and report.rows == complete < len(result.holdout)


def test_train_and_export_generated(tmp_path: Path) -> None:
    out = tmp_path / "models" / "model.onnx"
    result = train_and_export(None, out, rows=3_000, seed=1)
    content = out.read_bytes()
    assert result.path == out and result.size_bytes == len(content)
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    assert result.agreement.ok and result.metrics["rows_train"] == 2_400
    metadata = TabularModel(out).metadata
    assert metadata["training_data"] == "generated(rows=3000, seed=1)"
    assert metadata["sha256_of_training_data"] == result.data_sha256
    assert list(tmp_path.joinpath("models").iterdir()) == [out]  # no temp file left behind


def test_train_and_export_from_csv(tmp_path: Path) -> None:
    data = write_csv(generate(2_000, seed=4), tmp_path / "train.csv")
    result = train_and_export(data, tmp_path / "model.onnx", seed=4)
    assert result.metrics["rows_train"] + result.metrics["rows_holdout"] == 2_000
    assert TabularModel(result.path).metadata["training_data"] == "train.csv"


def test_train_and_export_writes_nothing_when_the_export_disagrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_model_path: Path
) -> None:
    wrong = trained_model_path.read_bytes()  # another pipeline's export: the session's lab model
    monkeypatch.setattr(train_module, "to_onnx", lambda *args, **kwargs: wrong)
    out = tmp_path / "model.onnx"
    with pytest.raises(AgreementError):
        train_and_export(None, out, rows=2_000, seed=2)
    assert not out.exists() and not list(tmp_path.iterdir())


# -- the course's model and batch -------------------------------------------------------------------------------


@pytest.mark.course
def test_course_model_scores_generated_rows(course_model_path: Path) -> None:
    course = TabularModel(course_model_path)
    rows = generate(2_000, seed=3)
    prediction = course.predict({name: rows[name].astype(str).tolist() for name in course.feature_names})
    assert len(prediction) == 2_000
    # Our labels carry real signal in the course model's eyes too.
    positive = list(prediction.classes).index(">50K")
    truth = (rows[LABEL] == ">50K").to_numpy()
    assert prediction.probabilities[truth, positive].mean() > prediction.probabilities[~truth, positive].mean() + 0.2


@pytest.mark.course
def test_our_model_scores_the_course_batch(
    model: TabularModel, trained: TrainResult, onnx_bytes: bytes, course_batch_path: Path
) -> None:
    sink = io.StringIO()
    with course_batch_path.open(newline="") as source:
        summary = score_csv(model, source, sink)
    assert summary.rows == 10_090
    assert 0.1 < summary.label_counts[">50K"] / summary.rows < 0.35
    assert sink.getvalue().splitlines()[0].split(",")[-3:] == [
        PREDICTION_COLUMN,
        *map(probability_column, model.classes),
    ]
    # Real rows (numerics written as 39.0) score the same through ONNX as through the pipeline.
    report = check_agreement(trained.pipeline, onnx_bytes, pd.read_csv(course_batch_path))
    assert report.rows == 10_090 and report.disagreeing_rows == 0
