"""Turning request bodies into validated columns for the inference core — no pandas, no per-request model builds.

JSON records go through the served model's pydantic validators (``RecordTypes``); CSV goes through the core's own CSV
reader and casting (exactly what the Lambda does). Errors are raised as :class:`PayloadError` carrying a status code.
"""

from __future__ import annotations

import csv
import io
import itertools
from typing import Any

import numpy as np
from pydantic import ValidationError
from pydantic_core import from_json

from mlops_lab.api.model_store import Snapshot
from mlops_lab.inference import InputError, Prediction, TabularModel, output_columns, read_csv_chunks

Columns = dict[str, list[Any]]


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


def invocation_csv(snapshot: Snapshot, body: bytes) -> tuple[Columns, int, int]:
    """Columns from CSV, with or without a header row (SageMaker sends none; then columns are in model order).

    Returns ``(columns, rows, first_row)``; values stay strings and are cast by the core, as in the Lambda.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PayloadError(422, f"CSV body is not UTF-8: {exc}") from None
    names = snapshot.feature_names
    try:
        first_line = next(csv.reader(io.StringIO(text, newline=""), skipinitialspace=True), [])
    except csv.Error as exc:
        raise PayloadError(422, f"unreadable CSV: {exc}") from None
    has_header = any(field.strip() in names for field in first_line)
    lines: Any = io.StringIO(text, newline="")
    offset = 0
    if not has_header:
        lines = itertools.chain([",".join(names) + "\n"], lines)
        offset = 1  # row numbers in errors: the user's own lines, without our synthetic header
    limit = snapshot.types.max_rows
    try:
        chunks = read_csv_chunks(lines, names, limit + 1)
        first_row, header, rows = next(chunks)
    except InputError as exc:
        raise _csv_error(exc, offset) from None
    except csv.Error as exc:
        raise PayloadError(422, f"unreadable CSV: {exc}") from None
    if len(rows) > limit:
        raise too_many_rows(f"more than {limit}", limit)
    return dict(zip(header, map(list, zip(*rows, strict=False)), strict=True)), len(rows), first_row - offset


def _csv_error(exc: InputError, offset: int) -> PayloadError:
    report = exc.to_dict()
    for row in report.get("rows", []):
        if "row" in row:
            row["row"] -= offset
    return PayloadError(422, report.pop("reason"), **report)


def predictions_csv(model: TabularModel, prediction: Prediction) -> str:
    """SageMaker's CSV answer: the batch output's own columns (``output_columns``) — ``prediction`` (a label, or a
    regressor's value in its shortest exact form), then ``probability_<class>`` per class when the model gives them."""
    sink = io.StringIO()
    writer = csv.writer(sink, lineterminator="\n")
    writer.writerow(output_columns(model))
    labels = prediction.label_texts()
    if prediction.classes:
        probabilities = np.char.mod("%.6f", prediction.probabilities).tolist()
        writer.writerows([label, *probs] for label, probs in zip(labels, probabilities, strict=True))
    else:
        writer.writerows([label] for label in labels)
    return sink.getvalue()
