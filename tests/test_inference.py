"""The inference core against real ONNX models: the course's, the lab's own, and single-tensor models."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from mlops_lab.data import FEATURES
from mlops_lab.inference import (
    PREDICTION_COLUMN,
    InputError,
    TabularModel,
    probability_column,
    read_csv_chunks,
    score_csv,
    score_csv_text,
)
from mlops_lab.synthetic import generate
from tests.model_zoo import tensor_classifier
from tests.support import parse_csv

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


def distinct_rows(n: int, seed: int) -> list[list[str]]:
    """``n`` different rows (generated data, course column order) as CSV fields."""
    assert list(FEATURES) == COURSE_COLUMNS
    rows = generate(n, seed=seed, with_label=False).astype(str).to_numpy().tolist()
    assert len({tuple(row) for row in rows}) == n
    return rows


def output_columns(model: TabularModel) -> list[str]:
    return [PREDICTION_COLUMN, *(probability_column(c) for c in model.classes)]


def scored_alone(model: TabularModel, header: list[str], row: list[str]) -> tuple[str, list[float]]:
    """The label and probabilities of ``row`` scored by itself, its columns in the model's own order."""
    values = dict(zip(header, row, strict=True))
    output, _ = score_csv_text(model, csv_text([[values[name] for name in model.feature_names]], model.feature_names))
    label, *probabilities = parse_csv(output)[1][len(header) :]
    return label, [float(p) for p in probabilities]


def assert_each_row_scored_as_alone(model: TabularModel, output: str, header: list[str], rows: list[list[str]]) -> None:
    """``output`` is ``header`` + the new columns, then each input row, in order, followed by what scoring that row
    alone gives: a row paired with another row's prediction (a shifted or reordered chunk) or a column read as
    another (a positional mapping) shows here, where identical rows would hide it."""
    parsed = parse_csv(output)
    assert parsed[0] == [*header, *output_columns(model)]
    assert len(parsed) - 1 == len(rows)
    for number, (row, out) in enumerate(zip(rows, parsed[1:], strict=True), start=2):
        assert out[: len(header)] == row, f"row {number}: input fields not echoed"
        label, probabilities = scored_alone(model, header, row)
        assert out[len(header)] == label, f"row {number}: label {out[len(header)]!r}, alone it is {label!r}"
        assert [float(p) for p in out[len(header) + 1 :]] == pytest.approx(probabilities, abs=2e-6), f"row {number}"


@pytest.fixture(params=["own", "course"])
def any_model(request: pytest.FixtureRequest, trained_model_path: Path) -> TabularModel:
    """The lab's own model (always), and the course's (when ../shared has it: skipped otherwise)."""
    if request.param == "course":
        return TabularModel(request.getfixturevalue("course_model_path"))
    return TabularModel(trained_model_path)


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
    assert [r[PREDICTION_COLUMN] for r in scored] == list(labels)
    for c in model.classes:
        assert [float(r[probability_column(c)]) for r in scored] == pytest.approx(
            [p[c] for p in probabilities], abs=1e-6
        )
    assert summary.label_counts == {c: list(labels).count(c) for c in model.classes}
    assert list(scored[0])[-3:] == output_columns(model)


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
    model = TabularModel(tensor_classifier(tmp_path / "tensor.onnx", zipmap=zipmap))
    assert not model.per_column
    assert model.feature_names == ["f0", "f1", "f2"]
    output, summary = score_csv_text(model, "f0,f1,f2\n2,2,0\n-2,-2,0\n")
    assert model.classes == ("0", "1")
    assert [row[PREDICTION_COLUMN] for row in csv.DictReader(io.StringIO(output))] == ["1", "0"]
    assert summary.label_counts == {"0": 1, "1": 1}


def test_tensor_model_with_named_features(tmp_path: Path) -> None:
    names = {"feature_names": json.dumps(["x", "y", "z"])}
    model = TabularModel(tensor_classifier(tmp_path / "tensor.onnx", zipmap=False, metadata=names))
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


# Column orders a file may come in: the reverse of the model's, and the model's with two pairs of same-typed columns
# swapped (a positional bug then scores silently wrong values instead of failing on a type).
def swapped(columns: list[str], *pairs: tuple[str, str]) -> list[str]:
    order = list(columns)
    for first, second in pairs:
        i, j = order.index(first), order.index(second)
        order[i], order[j] = order[j], order[i]
    return order


ORDERS = {
    "reversed": list(reversed(COURSE_COLUMNS)),
    "same-typed-swapped": swapped(COURSE_COLUMNS, ("capital_gain", "capital_loss"), ("age", "hours_per_week")),
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_columns_in_any_order_and_blank_lines(any_model: TabularModel, order: str) -> None:
    """Columns are matched by name: every row scores as it does alone in the model's own column order."""
    header = ORDERS[order]
    assert sorted(header) == sorted(COURSE_COLUMNS) and header != COURSE_COLUMNS
    rows = distinct_rows(30, seed=17)
    rows[3][COURSE_COLUMNS.index("capital_gain")] = "15024"  # so the capital columns differ within some rows
    rows[8][COURSE_COLUMNS.index("capital_loss")] = "1902"
    permuted = [[row[COURSE_COLUMNS.index(name)] for name in header] for row in rows]
    text = csv_text([*permuted[:10], [], *permuted[10:], []], header=header)  # blank lines carry no data
    output, summary = score_csv_text(any_model, text, chunk_rows=7)
    assert summary.rows == 30
    assert_each_row_scored_as_alone(any_model, output, header, permuted)


@pytest.mark.parametrize("chunk_rows", [1, 2, 7, 24, 25, 26, 100])
def test_chunks_give_the_same_output(any_model: TabularModel, chunk_rows: int) -> None:
    """Chunk boundaries anywhere (one row per chunk, a last chunk of one row, exactly one chunk...): each row keeps
    its own prediction, none is lost or repeated."""
    rows = distinct_rows(25, seed=23)
    sink = io.StringIO()
    summary = score_csv(any_model, io.StringIO(csv_text(rows)), sink, chunk_rows=chunk_rows)
    assert summary.rows == 25
    assert_each_row_scored_as_alone(any_model, sink.getvalue(), COURSE_COLUMNS, rows)
    labels = [row[len(COURSE_COLUMNS)] for row in parse_csv(sink.getvalue())[1:]]
    assert summary.label_counts == {c: labels.count(c) for c in any_model.classes if c in labels}


def test_output_echoes_input_lines_and_survives_quoting(trained_model_path: Path) -> None:
    """Rows are echoed as they came with the new columns appended; quoted fields (one holding a newline, which
    makes its chunk re-encoded field by field), CRLF endings, blank lines and any chunk size parse the same."""
    model = TabularModel(trained_model_path)
    rows = distinct_rows(5, seed=31)  # different rows: an echo paired with another row's prediction shows
    plain = ",".join(rows[0])
    spaced = ", ".join(rows[1])
    quoted = ",".join(f'"{v}"' for v in rows[2])
    hours = COURSE_COLUMNS.index("hours_per_week")
    # a number with a newline after it
    multiline = ",".join([*rows[3][:hours], f'"{rows[3][hours]}\n"', *rows[3][hours + 1 :]])
    last = ",".join(rows[4])
    lines = [",".join(COURSE_COLUMNS), plain, spaced, "", quoted, multiline, last]
    echoed = [*rows[:3], [*rows[3][:hours], rows[3][hours] + "\n", *rows[3][hours + 1 :]], rows[4]]
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
            assert parsed[0] == [*COURSE_COLUMNS, *output_columns(model)]
            assert [row[:12] for row in parsed[1:]] == echoed
            expected = model.predict({name: [row[i] for row in rows] for i, name in enumerate(COURSE_COLUMNS)})
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
