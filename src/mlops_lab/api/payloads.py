"""Turning request bodies into validated columns for the inference core — no pandas, no per-request model builds —
and predictions into SageMaker's answers.

JSON records (and JSON Lines) go through the served model's pydantic validators (``RecordTypes``); CSV goes through
the core's own CSV reader and casting (exactly what the Lambda does). ``/invocations`` reads its batches in chunks
(``csv_chunks``, ``jsonlines_chunks``) and answers one line per record (``predictions_csv``,
``predictions_jsonlines``). Errors are raised as :class:`PayloadError` carrying a status code.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError
from pydantic_core import from_json, to_json

from mlops_lab.api.model_store import Snapshot
from mlops_lab.inference import (
    PREDICTION_COLUMN,
    REGRESSOR,
    InputError,
    Prediction,
    probability_column,
    read_csv_chunks,
)

Columns = dict[str, list[Any]]
Chunk = tuple[Columns, int, int]  # (columns, rows, the first row's number in the body)
Chunks = Iterator[Chunk]
# Rows parsed and scored at a time in /invocations: a 6 MB batch is never held as one set of tensors, so a worker's
# memory is its payload plus one chunk's working set, whatever the batch's row count.
CHUNK_ROWS = 4096


class PayloadError(Exception):
    def __init__(self, status: int, detail: Any, **extra: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail
        self.extra = extra

    def content(self) -> dict[str, Any]:
        return {"detail": self.detail, **self.extra}


def too_many_rows(rows: int | str, limit: int) -> PayloadError:
    return PayloadError(
        413,
        f"{rows} rows in one request exceed the limit of {limit} (LAB_API_MAX_ROWS); "
        "split the input or use the S3 batch path",
    )


def _validation_error(exc: ValidationError, prefix: tuple[Any, ...], max_rows: int) -> PayloadError:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    for error in errors:
        if error["type"] == "too_long" and error["loc"] == ():
            return too_many_rows(f"more than {max_rows}", max_rows)
    detail = [
        {"loc": ["body", *prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]} for error in errors[:50]
    ]
    return PayloadError(422, detail)


def _columns(records: list[dict[str, Any]], names: tuple[str, ...]) -> Columns:
    return {name: [record[name] for record in records] for name in names}


def records_from_json(snapshot: Snapshot, body: bytes) -> list[dict[str, Any]]:
    """``/predict``: one record (an object) or a list of records. Validated against the model's input schema."""
    types = snapshot.types
    many = body.lstrip()[:1] == b"["
    try:
        if many:
            return types.many.validate_json(body)
        return [types.one.validate_json(body)]
    except ValidationError as exc:
        raise _validation_error(exc, (), types.max_rows) from None


def columns_from_records(snapshot: Snapshot, records: list[dict[str, Any]]) -> Columns:
    return _columns(records, snapshot.feature_names)


# -- SageMaker /invocations -------------------------------------------------------------------------------------------


def invocation_json(snapshot: Snapshot, body: bytes) -> list[dict[str, Any]]:
    """Records from the JSON shapes SageMaker and mlflow clients send.

    A list of records, one record, ``{"instances": [...]}`` or ``{"inputs": [...]}`` (records),
    ``{"dataframe_records": [...]}`` and ``{"dataframe_split": {"columns": [...], "data": [[...]]}}`` (mlflow).
    """
    types = snapshot.types
    try:
        payload = from_json(body)
    except ValueError as exc:
        raise PayloadError(422, [{"loc": ["body"], "msg": f"Invalid JSON: {exc}", "type": "json_invalid"}]) from None
    prefix: tuple[Any, ...] = ()
    if isinstance(payload, dict):
        wrappers = [key for key in ("dataframe_split", "dataframe_records", "instances", "inputs") if key in payload]
        if wrappers and len(payload) == 1:
            (key,) = wrappers
            prefix = (key,)
            payload = payload[key]
            if key == "dataframe_split":
                payload = _split_to_records(payload, types.max_rows)
    if isinstance(payload, list):
        if len(payload) > types.max_rows:
            raise too_many_rows(len(payload), types.max_rows)
        try:
            return types.many.validate_python(payload)
        except ValidationError as exc:
            raise _validation_error(exc, prefix, types.max_rows) from None
    try:
        return [types.one.validate_python(payload)]
    except ValidationError as exc:
        raise _validation_error(exc, prefix, types.max_rows) from None


def _split_to_records(split: Any, max_rows: int) -> list[dict[str, Any]]:
    def bad(msg: str, *loc: Any) -> PayloadError:
        return PayloadError(422, [{"loc": ["body", "dataframe_split", *loc], "msg": msg, "type": "value_error"}])

    if not isinstance(split, dict):
        raise bad("expected an object with 'columns' and 'data'")
    columns, data = split.get("columns"), split.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise bad("expected a list of column names", "columns")
    if len(set(columns)) != len(columns):
        raise bad("duplicate column names", "columns")
    if not isinstance(data, list):
        raise bad("expected a list of rows", "data")
    if len(data) > max_rows:
        raise too_many_rows(len(data), max_rows)
    records = []
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise bad(f"expected a list of {len(columns)} values", "data", i)
        records.append(dict(zip(columns, row, strict=True)))
    return records


def csv_chunks(snapshot: Snapshot, body: bytes, *, max_rows: int | None, chunk_rows: int = CHUNK_ROWS) -> Chunks:
    """Columns from CSV, ``chunk_rows`` rows at a time, with or without a header row.

    SageMaker sends raw records (no header); then the columns are in the model's order. A header is still accepted
    for people, by this rule (:func:`is_header`): the first non-blank line is a header when every field on it is one
    of the model's feature names, or when it cannot be a record anyway (another number of fields than the model has
    features) and names at least one. So a record whose text happens to be a column name is still a record. Blank
    lines are not records (SageMaker's batch agent never sends them; one in a body is skipped, not answered).

    Yields ``(columns, rows, first_row)``; values stay strings and are cast by the core, as in the Lambda.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PayloadError(422, f"CSV body is not UTF-8: {exc}") from None
    stripped = text.lstrip("\r\n")
    if not stripped:
        raise PayloadError(422, "no records: the body is empty (or blank lines only)")
    skipped = text[: len(text) - len(stripped)]
    blank_lines = skipped.count("\n") + skipped.count("\r") - skipped.count("\r\n")
    names = snapshot.feature_names
    try:
        first_line = next(csv.reader(io.StringIO(stripped, newline=""), skipinitialspace=True), [])
    except csv.Error as exc:
        raise PayloadError(422, f"unreadable CSV: {exc}") from None
    lines: Any = io.StringIO(stripped, newline="")
    # Row numbers in errors are the body's own lines: the core counts its header as row 1.
    offset = -blank_lines
    if not is_header(first_line, names):
        lines = itertools.chain([",".join(names) + "\n"], lines)
        offset += 1  # our synthetic header is no line of the user's
    try:
        chunks = read_csv_chunks(lines, names, chunk_rows)
        seen = 0
        for first_row, header, rows in chunks:
            seen += len(rows)
            if max_rows is not None and seen > max_rows:
                raise too_many_rows(f"more than {max_rows}", max_rows)
            yield dict(zip(header, map(list, zip(*rows, strict=False)), strict=True)), len(rows), first_row - offset
    except InputError as exc:
        raise _csv_error(exc, offset) from None
    except csv.Error as exc:
        raise PayloadError(422, f"unreadable CSV: {exc}") from None


def is_header(fields: list[str], names: Sequence[str]) -> bool:
    """Is this first CSV line a header? Yes when all its fields are feature names; else only when it has another
    number of fields than a record has (so it is no record) and names at least one feature (a header with a column
    missing or one too many, which then gets the header's own error)."""
    named = [field.strip() in names for field in fields]
    if named and all(named):
        return True
    return len(fields) != len(names) and any(named)


def jsonlines_chunks(snapshot: Snapshot, body: bytes, *, max_rows: int | None, chunk_rows: int = CHUNK_ROWS) -> Chunks:
    """Columns from JSON Lines (``application/jsonlines``): one record a line, either an object (feature name ->
    value, validated as ``/predict`` validates a record) or an array of values in the model's feature order. Blank
    lines are not records, as in CSV. Errors name the line (``loc``: ``["body", "line", n, field]``, n from 1)."""
    names = snapshot.feature_names
    types = snapshot.types
    size = min(chunk_rows, types.max_rows)  # types.many refuses longer lists
    records: list[Any] = []
    numbers: list[int] = []
    seen = 0
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        seen += 1
        if max_rows is not None and seen > max_rows:
            raise too_many_rows(f"more than {max_rows}", max_rows)
        records.append(_jsonlines_record(line, number, names))
        numbers.append(number)
        if len(records) == size:
            yield _validated_chunk(types, records, numbers, names)
            records, numbers = [], []
    if records:
        yield _validated_chunk(types, records, numbers, names)
    elif not seen:
        raise PayloadError(422, "no records: the body is empty (or blank lines only)")


def _jsonlines_record(line: bytes, number: int, names: tuple[str, ...]) -> Any:
    def bad(msg: str, kind: str) -> PayloadError:
        return PayloadError(422, [{"loc": ["body", "line", number], "msg": msg, "type": kind}])

    try:
        value = from_json(line)
    except ValueError as exc:
        raise bad(f"Invalid JSON: {exc}", "json_invalid") from None
    if isinstance(value, list):
        if len(value) != len(names):
            raise bad(
                f"expected {len(names)} values in the model's feature order ({', '.join(names)}), got {len(value)}",
                "value_error",
            )
        return dict(zip(names, value, strict=True))
    if not isinstance(value, dict):
        raise bad("expected a JSON object (feature name -> value) or an array of values", "value_error")
    return value


def _validated_chunk(types: Any, records: list[Any], numbers: list[int], names: tuple[str, ...]) -> Chunk:
    try:
        valid = types.many.validate_python(records)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        detail = []
        for error in errors[:50]:
            index, *field = error["loc"]
            detail.append(
                {"loc": ["body", "line", numbers[int(index)], *field], "msg": error["msg"], "type": error["type"]}
            )
        raise PayloadError(422, detail) from None
    return _columns(valid, names), len(valid), numbers[0]


def _csv_error(exc: InputError, offset: int) -> PayloadError:
    report = exc.to_dict()
    for row in report.get("rows", []):
        if "row" in row:
            row["row"] -= offset
    return PayloadError(422, report.pop("reason"), **report)


def predictions_csv(prediction: Prediction) -> str:
    """SageMaker's CSV answer: one line per record and no header (on AWS a header would land in every mini-batch's
    output and misalign ``JoinSource=Input``). The columns are the batch output's own (``output_columns``):
    ``prediction`` (a label, or a regressor's value in its shortest exact form), then ``probability_<class>`` per
    class when the model gives them (6 decimals)."""
    sink = io.StringIO()
    writer = csv.writer(sink, lineterminator="\n")
    labels = prediction.label_texts()
    if prediction.classes:
        probabilities = np.char.mod("%.6f", prediction.probabilities).tolist()
        writer.writerows([label, *probs] for label, probs in zip(labels, probabilities, strict=True))
    else:
        writer.writerows([label] for label in labels)
    return sink.getvalue()


def predictions_jsonlines(prediction: Prediction) -> bytes:
    """The JSON Lines answer: one object per record, keyed by the CSV answer's columns with the same values —
    ``{"prediction": ..., "probability_<class>": ...}`` — so both formats carry the same fields for a join or an
    output filter (a regressor's NaN is null)."""
    if not len(prediction):
        return b""
    keys = [probability_column(name) for name in prediction.classes]
    values = prediction.labels.tolist() if prediction.kind == REGRESSOR else prediction.label_texts()
    if keys:
        rounded = np.round(prediction.probabilities.astype(np.float64), 6).tolist()
        rows = (
            {PREDICTION_COLUMN: value, **dict(zip(keys, probs, strict=True))}
            for value, probs in zip(values, rounded, strict=True)
        )
    else:
        rows = ({PREDICTION_COLUMN: value} for value in values)
    return b"\n".join(to_json(row, inf_nan_mode="null") for row in rows) + b"\n"
