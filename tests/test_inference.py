"""The inference core against real ONNX models: the course's, the lab's own, and single-tensor models."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

from mlops_lab.inference import InputError, TabularModel, read_csv_chunks, score_csv, score_csv_text

COURSE_COLUMNS = [
    "age",
    "work_class",
    "education",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
]
ROW = [
    "39",
    "Private",
    "Bachelors",
    "Married",
    "Professional",
    "Husband",
    "White",
    "Male",
    "0",
    "0",
    "40",
    "United-States",
]


def csv_text(rows: list[list[str]], header: list[str] = COURSE_COLUMNS) -> str:
    sink = io.StringIO()
    writer = csv.writer(sink, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return sink.getvalue()


def tensor_model(tmp_path: Path, *, zipmap: bool, metadata: dict[str, str] | None = None) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = to_onnx(
        LogisticRegression().fit(x, y),
        initial_types=[("input", FloatTensorType([None, 3]))],
        options={"zipmap": zipmap},
        target_opset=15,
    )
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / f"tensor-{zipmap}.onnx"
    onnx.save(model, path)
    return path


# -- the course model: one string/int64 input per column, ZipMap output ---------------------------------------


def test_course_model_schema(course_model_path: Path) -> None:
    model = TabularModel(course_model_path)
    assert model.per_column
    assert model.feature_names == COURSE_COLUMNS
    assert [f.json_type for f in model.features][:2] == ["integer", "string"]
    assert model.classes == ("<=50K", ">50K")


def test_course_batch_scores_unchanged(course_model_path: Path, course_batch_path: Path) -> None:
    """The course's own model on its own batch: same labels as feeding ONNX Runtime directly."""
    model = TabularModel(course_model_path)
    text = course_batch_path.read_text()
    output, summary = score_csv_text(model, text, chunk_rows=1000)
    assert summary.rows == 10090
    rows = list(csv.DictReader(io.StringIO(text)))
    feeds = {
        f.name: np.array([[r[f.name]] for r in rows], dtype=object)
        if f.is_string
        else np.array([[int(float(r[f.name]))] for r in rows], dtype=np.int64)
        for f in model.features
    }
    labels, probabilities = model.session.run(None, feeds)
    scored = list(csv.DictReader(io.StringIO(output)))
    assert [r["prediction"] for r in scored] == list(labels)
    assert float(scored[0]["probability_>50K"]) == pytest.approx(probabilities[0][">50K"], abs=1e-6)
    assert sum(summary.label_counts.values()) == 10090
    assert list(scored[0])[-3:] == ["prediction", "probability_<=50K", "probability_>50K"]


def test_course_model_rejects_fractional_integers(course_model_path: Path) -> None:
    model = TabularModel(course_model_path)
    row = ROW.copy()
    row[0] = "39.5"
    with pytest.raises(InputError) as caught:
        score_csv_text(model, csv_text([ROW, row]))
    assert caught.value.columns == ["age"]
    assert caught.value.rows == [{"row": 3, "column": "age", "value": "39.5"}]


@pytest.mark.parametrize("value", ["1e30", "-9.3e18", "inf", "nan"])
def test_course_model_rejects_integers_it_cannot_hold(course_model_path: Path, value: str) -> None:
    """Whole numbers beyond int64 used to wrap around silently in the cast; now they are reported like fractions."""
    model = TabularModel(course_model_path)
    row = ROW.copy()
    row[0] = value
    with pytest.raises(InputError) as caught:
        score_csv_text(model, csv_text([ROW, row, ROW]))
    assert caught.value.columns == ["age"]
    assert caught.value.rows == [{"row": 3, "column": "age", "value": value}]


# -- the lab's own model: metadata with classes and categories -------------------------------------------------


def test_own_model_metadata_and_unknown_category(trained_model_path: Path) -> None:
    model = TabularModel(trained_model_path)
    assert model.classes == tuple(json.loads(model.metadata["classes"]))
    row = ROW.copy()
    row[1] = "Astronaut"
    with pytest.raises(InputError, match="unknown categories in column 'work_class'") as caught:
        score_csv_text(model, csv_text([ROW, row]))
    assert caught.value.rows[0]["row"] == 3


def test_own_model_accepts_missing_numbers(trained_model_path: Path) -> None:
    """Numerics are float inputs, so an empty cell is NaN and the exported imputer fills it."""
    model = TabularModel(trained_model_path)
    row = ROW.copy()
    row[-2] = ""
    if model.features[COURSE_COLUMNS.index("hours_per_week")].is_integer:
        pytest.skip("this model takes integer numerics")
    _, summary = score_csv_text(model, csv_text([row]))
    assert summary.rows == 1


def test_records_and_columns_agree(trained_model_path: Path) -> None:
    model = TabularModel(trained_model_path)
    record = dict(zip(COURSE_COLUMNS, ROW, strict=True)) | {
        "age": 39,
        "capital_gain": 0,
        "capital_loss": 0,
        "hours_per_week": 40,
    }
    from_records = model.predict_records([record, record])
    from_csv = model.predict({name: [value] for name, value in zip(COURSE_COLUMNS, ROW, strict=True)})
    assert from_records.labels[0] == from_csv.labels[0]
    np.testing.assert_allclose(from_records.probabilities[0], from_csv.probabilities[0], rtol=1e-6)
    np.testing.assert_allclose(from_records.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert from_records.records()[0]["label"] in model.classes


def test_records_report_extra_and_wrongly_typed_fields(trained_model_path: Path) -> None:
    model = TabularModel(trained_model_path)
    record = dict(zip(COURSE_COLUMNS, ROW, strict=True))
    with pytest.raises(InputError, match="unexpected columns: income"):
        model.predict_records([record | {"income": ">50K"}])
    with pytest.raises(InputError, match="'sex' expects a string"):
        model.predict_records([record | {"sex": 1}])
    with pytest.raises(InputError, match="'age' expects a number"):
        model.predict_records([record | {"age": "old"}])
    with pytest.raises(InputError, match="no records"):
        model.predict_records([])


# -- single 2-D tensor models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("zipmap", [True, False])
def test_tensor_model_with_default_names(tmp_path: Path, zipmap: bool) -> None:
    model = TabularModel(tensor_model(tmp_path, zipmap=zipmap))
    assert not model.per_column
    assert model.feature_names == ["f0", "f1", "f2"]
    output, summary = score_csv_text(model, "f0,f1,f2\n2,2,0\n-2,-2,0\n")
    assert model.classes == ("0", "1")
    assert [row["prediction"] for row in csv.DictReader(io.StringIO(output))] == ["1", "0"]
    assert summary.label_counts == {"0": 1, "1": 1}


def test_tensor_model_with_named_features(tmp_path: Path) -> None:
    names = {"feature_names": json.dumps(["x", "y", "z"])}
    model = TabularModel(tensor_model(tmp_path, zipmap=False, metadata=names))
    prediction = model.predict_records([{"x": 2.0, "y": 2.0, "z": 0}, {"x": -2, "y": -2.0, "z": 0.5}])
    assert model.feature_names == ["x", "y", "z"]
    assert prediction.labels.tolist() == ["1", "0"]
    with pytest.raises(InputError, match="'z' expects a number"):
        model.predict_records([{"x": 1, "y": 1, "z": "high"}])


# -- CSV shape checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        (",".join(COURSE_COLUMNS) + "\n", "header only"),
        ("age,sex\n1,Male\n", "missing columns: work_class"),
        (",".join([*COURSE_COLUMNS, "income"]) + "\n" + ",".join([*ROW, ">50K"]) + "\n", "unexpected columns: income"),
        (",".join([*COURSE_COLUMNS, "age"]) + "\n", "duplicate columns: age"),
        (",".join(COURSE_COLUMNS) + "\n" + ",".join(ROW) + "\n" + ",".join(ROW[:5]) + "\n", "ragged rows"),
    ],
)
def test_csv_shape_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        list(read_csv_chunks(io.StringIO(text), COURSE_COLUMNS, chunk_rows=100))


def test_ragged_rows_are_numbered() -> None:
    text = csv_text([ROW, ROW, ROW[:3]])
    with pytest.raises(InputError) as caught:
        list(read_csv_chunks(io.StringIO(text), COURSE_COLUMNS, chunk_rows=2))
    assert caught.value.rows == [{"row": 4, "fields": 3, "expected": 12}]


def test_columns_in_any_order_and_blank_lines(course_model_path: Path) -> None:
    model = TabularModel(course_model_path)
    order = list(reversed(range(len(COURSE_COLUMNS))))
    text = csv_text([[ROW[i] for i in order], []], header=[COURSE_COLUMNS[i] for i in order])
    output, summary = score_csv_text(model, text)
    assert summary.rows == 1
    assert output.splitlines()[0].startswith("native_country,")


def test_chunks_give_the_same_output(course_model_path: Path) -> None:
    model = TabularModel(course_model_path)
    text = csv_text([ROW] * 25)
    outputs = set()
    for chunk_rows in (1, 7, 100):
        sink = io.StringIO()
        score_csv(model, io.StringIO(text), sink, chunk_rows=chunk_rows)
        outputs.add(sink.getvalue())
    assert len(outputs) == 1


def test_output_echoes_input_lines_and_survives_quoting(trained_model_path: Path) -> None:
    """Rows are echoed as they came with the new columns appended; quoted fields (one holding a newline, which
    makes its chunk re-encoded field by field), CRLF endings, blank lines and any chunk size parse the same."""
    model = TabularModel(trained_model_path)
    plain = ",".join(ROW)
    spaced = ", ".join(ROW)
    quoted = ",".join(f'"{v}"' for v in ROW)
    hours = COURSE_COLUMNS.index("hours_per_week")
    multiline = ",".join([*ROW[:hours], '"40\n"', *ROW[hours + 1 :]])  # a number with a newline after it
    lines = [",".join(COURSE_COLUMNS), plain, spaced, "", quoted, multiline, plain]
    outputs = set()
    for ending in ("\n", "\r\n"):
        for chunk_rows in (1, 2, 100):
            sink = io.StringIO()
            summary = score_csv(
                model, io.StringIO(ending.join(lines) + ending, newline=""), sink, chunk_rows=chunk_rows
            )
            assert summary.rows == 5
            text = sink.getvalue()
            parsed = list(csv.reader(io.StringIO(text, newline=""), skipinitialspace=True))
            assert parsed[0] == [*COURSE_COLUMNS, "prediction", *(f"probability_{c}" for c in model.classes)]
            assert [row[:12] for row in parsed[1:]] == [ROW, ROW, ROW, [*ROW[:hours], "40\n", *ROW[hours + 1 :]], ROW]
            expected = model.predict({name: [row[i] for row in parsed[1:]] for i, name in enumerate(COURSE_COLUMNS)})
            assert [row[12] for row in parsed[1:]] == expected.labels.tolist()
            assert [float(p) for row in parsed[1:] for p in row[13:]] == pytest.approx(
                expected.probabilities.ravel().tolist(), abs=1e-6
            )
            outputs.add(json.dumps(parsed))
            if chunk_rows <= 2:  # (with 100, the multi-line row's chunk is the whole file: re-encoded)
                assert text.splitlines()[1:3] == [
                    f"{plain},{parsed[1][12]},{','.join(parsed[1][13:])}",
                    f"{spaced},{parsed[2][12]},{','.join(parsed[2][13:])}",
                ]
    assert len(outputs) == 1
