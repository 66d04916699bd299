"""The inference core: an ONNX tabular model's schema -> typed inputs -> labels and class probabilities (a classifier)
or one number per row (a regressor).

Shared unchanged by the Lambda (it ships inside the layer) and the API, so it imports numpy and onnxruntime only.

Two input layouts are understood:
- one input per column, each of shape [None, 1] (what skl2onnx makes from a ColumnTransformer, as the course model);
- one 2-D numeric tensor [None, n_features], whose column names come from the model's metadata (``feature_names``)
  or default to ``f0..f{n-1}``.

Output layouts: a classifier's label tensor, alone or followed by a ZipMap (``seq(map(string|int64, float))``) or a
probability tensor [None, n_classes]; or a regressor's one numeric tensor ([None] or [None, 1]). Class names come from
the model's metadata (``classes``), from the ZipMap's keys, or default to ``0..k-1``. The metadata's ``kind``
(``classifier``/``regressor``), written by `mlops-lab publish`, settles a single output that could be either.

Models the lab exports also carry ``categories`` in their metadata (the vocabulary each categorical column was
trained on), so an unknown category is reported as bad input instead of being silently encoded as all zeros.

Why this is one module of some 770 lines: it ships alone, as one file, in the Lambda layer and inside every registered
model (mlflow's ``code_paths``), where nothing else of the lab is importable; split, its parts would have to travel
together everywhere it goes.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnxruntime as ort

# The columns every scored output adds (batch CSV, the API's CSV, the mlflow pyfunc): written once, here.
PREDICTION_COLUMN = "prediction"
PROBABILITY_PREFIX = "probability_"


CLASSIFIER = "classifier"
REGRESSOR = "regressor"


def probability_column(label: object) -> str:
    return f"{PROBABILITY_PREFIX}{label}"


MAX_REPORTED_PROBLEMS = 20
# predict_small takes up to this many records; with more, the column-wise numpy casting is as fast.
SMALL_BATCH = 16

_LABEL_TYPES = ("tensor(string)", "tensor(int64)", "tensor(int32)", "tensor(bool)")

_ONNX_TO_NUMPY = {
    "tensor(string)": np.object_,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}


class InputError(ValueError):
    """Input the model cannot score. Carries what a user needs to fix it."""

    # ExitCode.REFUSED (mlops_lab.errors reads it): this module ships alone, in models and the layer, so it carries
    # the number rather than importing the lab's errors.
    exit_code = 1

    def __init__(
        self,
        reason: str,
        *,
        columns: Sequence[str] = (),
        rows: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.columns = list(columns)
        self.rows = list(rows)[:MAX_REPORTED_PROBLEMS]

    def to_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {"reason": self.reason}
        if self.columns:
            report["columns"] = self.columns
        if self.rows:
            report["rows"] = self.rows
        return report


@dataclass(frozen=True)
class Feature:
    """One model input column: its name, numpy dtype and (when the model declares them) allowed categories."""

    name: str
    dtype: type
    categories: frozenset[str] | None = None

    @property
    def is_string(self) -> bool:
        return self.dtype is np.object_

    @property
    def is_integer(self) -> bool:
        return np.issubdtype(self.dtype, np.integer)

    @property
    def json_type(self) -> str:
        if self.is_string:
            return "string"
        if self.is_integer:
            return "integer"
        if self.dtype is np.bool_:
            return "boolean"
        return "number"


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # shape (n,): a classifier's labels as str objects; a regressor's values as floats
    probabilities: np.ndarray  # shape (n, len(classes)), float32; (n, 0) when the model gives none
    classes: tuple[str, ...]  # the probability columns' classes, in order (empty: no probabilities)
    kind: str = CLASSIFIER

    def __len__(self) -> int:
        return len(self.labels)

    def records(self) -> list[dict[str, Any]]:
        """JSON-friendly rows: ``{"label": ..., "probabilities": {class: p}}`` (no probabilities: the label alone);
        a regressor's ``{"prediction": value}``."""
        if self.kind == REGRESSOR:
            return [{PREDICTION_COLUMN: value} for value in self.labels.tolist()]
        if not self.classes:
            return [{"label": label} for label in self.labels.tolist()]
        return [
            {"label": label, "probabilities": dict(zip(self.classes, map(float, probs), strict=True))}
            for label, probs in zip(self.labels.tolist(), self.probabilities, strict=True)
        ]

    def label_texts(self) -> list[str]:
        """The prediction column as CSV text: labels as they are, values in their shortest exact decimal form."""
        if self.kind == REGRESSOR:
            return self.labels.astype(str).tolist()
        return self.labels.tolist()


@dataclass
class ScoreSummary:
    rows: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)  # classifiers
    value_range: tuple[float, float] | None = None  # regressors: the smallest and largest prediction

    def add(self, prediction: Prediction) -> None:
        self.rows += len(prediction)
        if prediction.kind == REGRESSOR:
            if len(prediction):
                low, high = float(np.nanmin(prediction.labels)), float(np.nanmax(prediction.labels))
                if self.value_range is not None:
                    low, high = min(low, self.value_range[0]), max(high, self.value_range[1])
                self.value_range = (low, high)
            return
        values, counts = np.unique(prediction.labels.astype(str), return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            self.label_counts[value] = self.label_counts.get(value, 0) + count


class TabularModel:
    """An ONNX classifier or regressor over named tabular columns."""

    def __init__(self, model: bytes | str | Path, *, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        # skl2onnx declares the label output as shape [1]; ORT warns on every batch. Errors still surface.
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self._categories: dict[str, list[str]] = json.loads(self.metadata.get("categories", "{}"))
        self._inputs = self.session.get_inputs()
        self.features, self.per_column = self._read_features()
        self.kind, self._label_output, self._probability_output, self._zipmap = self._read_outputs()
        self._classes: tuple[str, ...] | None = (
            tuple(json.loads(self.metadata["classes"])) if "classes" in self.metadata else None
        )
        if self._probability_output is None:  # no probability columns (a regressor; a classifier giving labels only)
            self._classes = ()
        # For the small-batch fast path (predict_small): built once per model, not per request.
        self._output_names = [self._label_output] + ([self._probability_output] if self._probability_output else [])
        self._casters = [(f.name, f.dtype, _scalar_caster(f)) for f in self.features]
        # InferenceSession.run re-validates the feed's names on every call; the fast path builds complete feeds
        # itself, so it calls the binding directly when this onnxruntime has one (same arguments, same errors).
        self._run_raw = getattr(self.session, "_sess", self.session).run
        # One record's input tensors, allocated once and overwritten in place by whoever holds the lock (ORT reads
        # them only during run); a concurrent caller allocates its own instead of waiting.
        self._row_lock = threading.Lock()
        if self.per_column:
            self._row_feeds = {name: np.empty((1, 1), dtype=dtype) for name, dtype, _ in self._casters}
            self._row_slots = [(self._row_feeds[name], (0, 0), name, cast) for name, _, cast in self._casters]
        else:
            (tensor,) = self._inputs
            matrix = np.empty((1, len(self.features)), dtype=self.features[0].dtype)
            self._row_feeds = {tensor.name: matrix}
            self._row_slots = [(matrix, (0, i), name, cast) for i, (name, _, cast) in enumerate(self._casters)]

    # -- schema -------------------------------------------------------------------------------------------------

    def _read_features(self) -> tuple[list[Feature], bool]:
        inputs = self._inputs
        if len(inputs) == 1 and _is_matrix(inputs[0].shape):
            (tensor,) = inputs
            dtype = _numpy_dtype(tensor.type, tensor.name)
            width = tensor.shape[1]
            names = json.loads(self.metadata["feature_names"]) if "feature_names" in self.metadata else None
            if names is None:
                if not isinstance(width, int):
                    raise ValueError(
                        f"input {tensor.name!r} has no fixed width and the model names no features (metadata 'feature_names')"
                    )
                names = [f"f{i}" for i in range(width)]
            return [Feature(name, dtype) for name in names], False
        features = []
        for item in inputs:
            if len(item.shape) != 2 or item.shape[1] != 1:
                raise ValueError(f"input {item.name!r} has shape {item.shape}; expected [N, 1] per column")
            categories = self._categories.get(item.name)
            features.append(
                Feature(item.name, _numpy_dtype(item.type, item.name), frozenset(categories) if categories else None)
            )
        return features, True

    def _read_outputs(self) -> tuple[str, str, str | None, bool]:
        """(kind, label or value output, probability output or None, probabilities as ZipMap?)."""
        outputs = self.session.get_outputs()
        first = outputs[0]
        declared = self.metadata.get("kind")
        numeric = first.type in ("tensor(float)", "tensor(double)")
        if len(outputs) == 1 or declared == REGRESSOR:
            if declared == REGRESSOR or (declared is None and numeric):
                if not numeric or not _is_single_value(first.shape):
                    raise ValueError(
                        f"a regressor needs one numeric output of shape [N] or [N, 1]; {first.name!r} is "
                        f"{first.type} {first.shape}"
                    )
                return REGRESSOR, first.name, None, False
            if first.type not in _LABEL_TYPES or len(first.shape or []) > 2:
                raise ValueError(f"unsupported output {first.name!r}: {first.type} {first.shape}")
            return CLASSIFIER, first.name, None, False
        probability = outputs[1]
        if first.type not in _LABEL_TYPES:
            raise ValueError(
                f"expected a classifier (a label output, then probabilities) or a regressor (one numeric output); "
                f"the first of {len(outputs)} outputs, {first.name!r}, is {first.type}"
            )
        zipmap = probability.type.startswith("seq(map(")
        if not zipmap and probability.type not in ("tensor(float)", "tensor(double)"):
            raise ValueError(f"unsupported probability output type {probability.type}")
        return CLASSIFIER, first.name, probability.name, zipmap

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in probability-column order (learned from the first prediction when not in metadata)."""
        if self._classes is None:
            self.predict_records([self._example_record()])
        assert self._classes is not None
        return self._classes

    def schema(self) -> list[dict[str, Any]]:
        return [
            {"name": f.name, "type": f.json_type} | ({"categories": sorted(f.categories)} if f.categories else {})
            for f in self.features
        ]

    def _example_record(self) -> dict[str, Any]:
        return {f.name: (sorted(f.categories)[0] if f.categories else "") if f.is_string else 0 for f in self.features}

    # -- inputs -------------------------------------------------------------------------------------------------

    def prepare(
        self, columns: Mapping[str, Sequence[Any]], *, first_row: int = 1, text: bool = False
    ) -> dict[str, np.ndarray]:
        """Cast named columns (CSV strings or JSON values) to the model's input tensors.

        ``first_row`` is the number reported for the first value, so errors point at the user's own row numbers.
        ``text=True`` says every value is a str (parsed CSV), which spares checking the types of string columns.
        """
        missing = [name for name in self.feature_names if name not in columns]
        if missing:
            raise InputError(f"missing columns: {', '.join(missing)}", columns=missing)
        cast = {f.name: _cast_column(f, columns[f.name], first_row, text) for f in self.features}
        if self.per_column:
            return {name: values.reshape(-1, 1) for name, values in cast.items()}
        (tensor,) = self._inputs
        return {tensor.name: np.column_stack([cast[name] for name in self.feature_names])}

    # -- scoring ------------------------------------------------------------------------------------------------

    def predict(self, columns: Mapping[str, Sequence[Any]], *, first_row: int = 1) -> Prediction:
        return self.run(self.prepare(columns, first_row=first_row))

    def run(self, feeds: Mapping[str, np.ndarray]) -> Prediction:
        """Score prepared inputs. ONNX Runtime releases the GIL meanwhile, which score_csv uses to overlap chunks."""
        try:
            outputs = self.session.run(self._output_names, dict(feeds))
        except Exception as error:  # ORT's own exception types; a value the model's operators cannot take
            raise _scoring_error(error) from None
        labels = np.asarray(outputs[0]).reshape(-1)
        if self.kind == REGRESSOR:
            return Prediction(labels, np.empty((len(labels), 0), np.float32), (), REGRESSOR)
        if self._probability_output is None:
            return Prediction(labels.astype(str).astype(object), np.empty((len(labels), 0), np.float32), ())
        probabilities = outputs[1]
        if self._classes is None:  # learned from the first output when the metadata did not say
            if self._zipmap and probabilities:
                self._classes = tuple(str(key) for key in probabilities[0])
            elif not self._zipmap:
                self._classes = tuple(str(i) for i in range(np.asarray(probabilities).shape[1]))
        matrix = self._probability_matrix(probabilities)
        return Prediction(labels.astype(str).astype(object), matrix, self.classes)

    def _probability_matrix(self, probabilities: Any) -> np.ndarray:
        """ORT's probability output (ZipMap dicts or a tensor) as an (n, classes) float32 matrix in class order."""
        if not self._zipmap:
            return np.asarray(probabilities, dtype=np.float32)
        keys = [_zipmap_key(probabilities[0], c) for c in self.classes] if probabilities else []
        return np.array([[row[k] for k in keys] for row in probabilities], dtype=np.float32).reshape(
            -1, len(self.classes)
        )

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> Prediction:
        """Score JSON-style records (one dict per row). Extra keys are reported, not ignored."""
        if not records:
            raise InputError("no records to score")
        names = self.feature_names
        extra = sorted({key for record in records for key in record} - set(names))
        if extra:
            raise InputError(f"unexpected columns: {', '.join(extra)}", columns=extra)
        missing = sorted({name for record in records for name in names if name not in record})
        if missing:
            raise InputError(f"missing columns: {', '.join(missing)}", columns=missing)
        return self.predict({name: [record[name] for record in records] for name in names})

    # -- small-batch fast path ------------------------------------------------------------------------------------

    def predict_small(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``predict_records(records).records()`` for a few records (an online request), with less overhead.

        Each value goes through a per-feature caster built at load time and straight into the input tensors (for one
        record, into tensors allocated once per model): no column lists, no per-column numpy casting and checks, no
        ``Prediction`` arrays. Anything the casters do not take as it is (a missing or extra key, a numeric string,
        a bool for a number, a null, an unknown category, more than ``SMALL_BATCH`` records) goes to the general
        path instead, so results and error reports are exactly those of ``predict_records``.
        """
        outputs = None
        if self._classes is not None and 0 < len(records) <= SMALL_BATCH:
            if len(records) == 1 and self._row_lock.acquire(blocking=False):
                try:
                    feeds = self._fill_row(records[0])
                    outputs = None if feeds is None else self._run_small(feeds)
                finally:
                    self._row_lock.release()
            else:
                feeds = self._prepare_small(records)
                outputs = None if feeds is None else self._run_small(feeds)
        if outputs is None:
            return self.predict_records(records).records()
        labels = np.asarray(outputs[0]).reshape(-1).tolist()
        if self.kind == REGRESSOR:
            return [{PREDICTION_COLUMN: value} for value in labels]
        classes = self._classes
        if not classes:
            return [{"label": str(label)} for label in labels]
        rows = self._probability_matrix(outputs[1]).tolist()
        return [
            {"label": str(label), "probabilities": dict(zip(classes, row, strict=True))}
            for label, row in zip(labels, rows, strict=True)
        ]

    def _run_small(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        try:
            return self._run_raw(self._output_names, feeds, None)
        except Exception as error:  # as in run()
            raise _scoring_error(error) from None

    def _fill_row(self, record: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """One record written into the model's reusable one-row tensors (caller holds ``_row_lock``), or None."""
        if len(record) != len(self._row_slots):  # (all feature names and no other key: exactly that many keys)
            return None
        try:
            for tensor, index, name, cast in self._row_slots:
                tensor[index] = cast(record[name])
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        return self._row_feeds

    def _prepare_small(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray] | None:
        """The model's feeds for a few records in new arrays, or None when a value needs the general path."""
        width = len(self._casters)
        if any(len(record) != width for record in records):
            return None
        try:
            if self.per_column:
                return {
                    name: np.array([[cast(record[name])] for record in records], dtype=dtype)
                    for name, dtype, cast in self._casters
                }
            (tensor,) = self._inputs
            rows = [[cast(record[name]) for name, _, cast in self._casters] for record in records]
            return {tensor.name: np.array(rows, dtype=self.features[0].dtype)}
        except (KeyError, TypeError, ValueError, OverflowError):
            return None


# ONNX Runtime reports an allocation that failed as a RuntimeException of its own, not as MemoryError.
_OUT_OF_MEMORY = ("bad_alloc", "bad allocation", "failed to allocate", "out of memory")


def _scoring_error(error: Exception) -> Exception:
    """What ORT's failure to score means: no memory (the machine's fault, MemoryError: the caller retries or fails)
    or a value the model's operators cannot take (the input's, InputError)."""
    if isinstance(error, MemoryError) or any(sign in str(error).lower() for sign in _OUT_OF_MEMORY):
        return MemoryError(f"onnxruntime ran out of memory scoring a chunk: {error}")
    return InputError(f"the model could not score this input: {error}")


# -- CSV --------------------------------------------------------------------------------------------------------


def read_csv_chunks(
    text: IO[str], feature_names: Sequence[str], chunk_rows: int, *, chunk_chars: int | None = None
) -> Iterator[tuple[int, list[str], list[list[str]]]]:
    """Yield ``(first_row_number, header, rows)`` chunks from a CSV stream, validating its shape as it goes.

    A chunk holds at most ``chunk_rows`` rows and, with ``chunk_chars``, stops at the line that reaches that many
    characters (a chunk always holds at least one line): very wide rows cannot fill memory ``chunk_rows`` at a time.
    Row numbers are the file's own line numbers for data rows (the header is row 1), assuming no quoted newlines.
    Raises InputError for an empty file, a header with missing/extra/duplicate columns, no data rows, or ragged rows.
    """
    for first_row, header, rows, _ in _csv_chunks(
        text, feature_names, chunk_rows, keep_lines=False, chunk_chars=chunk_chars
    ):
        yield first_row, header, rows


def _take_lines(lines: Iterator[str], rows: int, chars: int | None) -> list[str]:
    """The next ``rows`` lines, or fewer: up to and including the one that brings them to ``chars`` characters."""
    if chars is None:
        return list(itertools.islice(lines, rows))
    taken: list[str] = []
    size = 0
    for line in lines:
        taken.append(line)
        size += len(line)
        if size >= chars or len(taken) >= rows:
            break
    return taken


def _csv_chunks(
    text: Iterable[str],
    feature_names: Sequence[str],
    chunk_rows: int,
    *,
    keep_lines: bool,
    chunk_chars: int | None = None,
) -> Iterator[tuple[int, list[str], list[list[str]], list[str] | None]]:
    """``read_csv_chunks`` plus, with ``keep_lines``, each row's own source line (None for a chunk where a quoted
    field spans lines): score_csv echoes the input columns as they came instead of re-encoding every field."""
    lines_in = iter(text)
    try:
        header = next(csv.reader(lines_in, skipinitialspace=True))
    except StopIteration:
        raise InputError("empty file: expected a CSV header and at least one data row") from None
    header = [name.strip() for name in header]
    _check_header(header, feature_names)
    width = len(header)
    row_number = 2
    any_rows = False
    while True:
        chunk = _take_lines(lines_in, chunk_rows, chunk_chars)
        if not chunk:
            break
        lines: list[str] | None = chunk
        if '"' not in "".join(chunk):
            # Without quotes no field can hold a newline: one line is one row, parsed in one C call.
            rows = list(csv.reader(chunk, skipinitialspace=True))
        else:
            # A quoted field may hold a newline, even across the chunk's end: let the reader take more lines.
            reader = csv.reader(itertools.chain(chunk, lines_in), skipinitialspace=True)
            rows = []
            for row in reader:
                rows.append(row)
                if reader.line_num >= len(chunk):
                    break
            if reader.line_num != len(rows):
                lines = None  # some row spans lines: this chunk is re-encoded field by field
        if not all(rows):  # blank lines carry no data
            if lines is not None:
                lines = [line for line, row in zip(lines, rows, strict=True) if row]
            rows = [row for row in rows if row]
            if not rows:
                continue
        any_rows = True
        if len(set(map(len, rows))) != 1 or len(rows[0]) != width:
            ragged = [
                {"row": row_number + i, "fields": len(row), "expected": width}
                for i, row in enumerate(rows)
                if len(row) != width
            ]
            raise InputError(f"ragged rows: expected {width} fields per row", rows=ragged)
        yield row_number, header, rows, lines if keep_lines else None
        row_number += len(rows)
    if not any_rows:
        raise InputError("no data rows: the file has a header only")


def _check_header(header: list[str], feature_names: Sequence[str]) -> None:
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise InputError(f"duplicate columns: {', '.join(duplicates)}", columns=duplicates)
    missing = [name for name in feature_names if name not in header]
    extra = [name for name in header if name not in feature_names]
    problems = []
    if missing:
        problems.append(f"missing columns: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected columns: {', '.join(extra)}")
    if problems:
        raise InputError("; ".join(problems) + f" (expected: {', '.join(feature_names)})", columns=missing + extra)


def output_columns(model: TabularModel) -> list[str]:
    """The columns scoring adds: ``prediction``, then ``probability_<class>`` per class when the model gives them."""
    return [PREDICTION_COLUMN, *map(probability_column, model.classes)]


def score_csv(
    model: TabularModel, source: IO[str], sink: IO[str], *, chunk_rows: int = 8192, chunk_chars: int | None = None
) -> ScoreSummary:
    """Score a CSV stream chunk by chunk; write input columns + ``prediction`` + ``probability_<class>``.

    Memory stays bounded by ``chunk_rows`` and, for files of very wide rows, by ``chunk_chars`` (a chunk ends at the
    line that reaches that many characters; see ``read_csv_chunks``). While ONNX Runtime scores one chunk (in a
    worker thread, without the GIL), this thread parses the next one and writes the previous one, so parsing and
    scoring overlap: about two chunks are in memory at once. Input columns are written as they came (each row's own
    line, with the new columns appended).
    On bad input an InputError is raised; whatever was already written to ``sink`` must then be discarded by the
    caller (the Lambda writes to a temp file and uploads only on success).
    """
    writer = csv.writer(sink, lineterminator="\n")
    summary = ScoreSummary()
    pending: tuple[list[list[str]], list[str] | None, Future[Prediction]] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime") as scorer:
        for first_row, header, rows, lines in _csv_chunks(
            source, model.feature_names, chunk_rows, keep_lines=True, chunk_chars=chunk_chars
        ):
            feeds = model.prepare(
                dict(zip(header, zip(*rows, strict=False), strict=True)), first_row=first_row, text=True
            )
            scoring = scorer.submit(model.run, feeds)
            if pending is None:
                writer.writerow([*header, *output_columns(model)])
            else:
                _write_scored(sink, writer, summary, *pending)
            pending = (rows, lines, scoring)
        if pending is not None:
            _write_scored(sink, writer, summary, *pending)
    return summary


def _write_scored(
    sink: IO[str],
    writer: Any,
    summary: ScoreSummary,
    rows: list[list[str]],
    lines: list[str] | None,
    scoring: Future[Prediction],
) -> None:
    prediction = scoring.result()
    labels = prediction.label_texts()
    if not prediction.classes:  # a regressor's value, or a label alone
        if lines is None:
            writer.writerows([*row, label] for row, label in zip(rows, labels, strict=True))
        else:
            sink.write(
                "".join(
                    [
                        f"{line.rstrip(_LINE_END)},{_csv_field(label)}\n"
                        for line, label in zip(lines, labels, strict=True)
                    ]
                )
            )
        summary.add(prediction)
        return
    # Python's own float formatting is ~2.5x faster than np.char.mod here.
    flat = iter([f"{p:.6f}" for p in prediction.probabilities.ravel().tolist()])
    probabilities = list(zip(*[flat] * len(prediction.classes), strict=True))  # one tuple of strings per row
    if lines is None:
        writer.writerows([*row, label, *probs] for row, label, probs in zip(rows, labels, probabilities, strict=True))
    else:
        # Appending to each source line is ~2.5x faster than csv.writer re-encoding every input field.
        quoted = {label: _csv_field(label) for label in prediction.classes}
        sink.write(
            "".join(
                [
                    f"{line.rstrip(_LINE_END)},{quoted.get(label) or _csv_field(label)},{','.join(probs)}\n"
                    for line, label, probs in zip(lines, labels, probabilities, strict=True)
                ]
            )
        )
    summary.add(prediction)


_LINE_END = "\r\n"


def _csv_field(value: str) -> str:
    """``value`` as csv.writer would write it (quoted only when it must be)."""
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def score_csv_text(model: TabularModel, text: str, *, chunk_rows: int = 8192) -> tuple[str, ScoreSummary]:
    sink = io.StringIO()
    summary = score_csv(model, io.StringIO(text, newline=""), sink, chunk_rows=chunk_rows)
    return sink.getvalue(), summary


# -- casting ----------------------------------------------------------------------------------------------------


def _cast_column(feature: Feature, values: Sequence[Any], first_row: int, text: bool = False) -> np.ndarray:
    if feature.is_string:
        return _cast_strings(feature, values, first_row, text)
    if feature.dtype is np.bool_:
        return _cast_bools(feature, values, first_row)
    numbers = _as_float_array(values)
    if numbers is None and not feature.is_integer:
        # A blank cell is a missing value; float inputs carry it as NaN for the model's imputer to fill.
        numbers = _as_float_array(
            [np.nan if v is None or (isinstance(v, str) and not v.strip()) else v for v in values]
        )
    if numbers is None:
        bad = [(i, v) for i, v in enumerate(values) if _as_float(v) is None]
        raise _type_error(feature, bad, first_row)
    if feature.is_integer:
        finite = np.isfinite(numbers)
        with np.errstate(invalid="ignore"):  # a value beyond the type casts to garbage, caught just below
            integers = numbers.astype(feature.dtype) if finite.all() else None
        if integers is None or (integers != numbers).any():  # (a fraction, NaN, inf; or beyond the integer type)
            invalid = ~finite | (numbers != np.round(numbers))
            if integers is not None:
                invalid |= integers != numbers
            bad = [(int(i), values[int(i)]) for i in np.flatnonzero(invalid)]
            raise _type_error(feature, bad, first_row)
        return integers
    return numbers.astype(feature.dtype)


def _cast_strings(feature: Feature, values: Sequence[Any], first_row: int, text: bool = False) -> np.ndarray:
    if not text and set(map(type, values)) != {str}:  # JSON may carry numbers or nulls; CSV text never does
        bad = [(i, v) for i, v in enumerate(values) if not isinstance(v, str)]
        raise _type_error(feature, bad, first_row)
    array = np.asarray(values, dtype=object)
    if feature.categories is not None:
        unique = set(values)
        unknown = unique - feature.categories
        if unknown:
            bad = [(i, v) for i, v in enumerate(values) if v in unknown]
            raise InputError(
                f"unknown categories in column {feature.name!r}: {', '.join(map(repr, sorted(unknown)[:10]))}"
                f" (known: {', '.join(sorted(feature.categories))})",
                columns=[feature.name],
                rows=[{"row": first_row + i, "column": feature.name, "value": v} for i, v in bad],
            )
    return array


def _cast_bools(feature: Feature, values: Sequence[Any], first_row: int) -> np.ndarray:
    truth = {"true": True, "1": True, "false": False, "0": False}
    out = []
    bad = []
    for i, value in enumerate(values):
        if isinstance(value, bool):
            out.append(value)
        elif str(value).strip().lower() in truth:
            out.append(truth[str(value).strip().lower()])
        else:
            bad.append((i, value))
    if bad:
        raise _type_error(feature, bad, first_row)
    return np.asarray(out, dtype=np.bool_)


def _scalar_caster(feature: Feature) -> Any:
    """One JSON value -> the Python value the general path would put in the tensor; TypeError for anything else.

    Only the plain cases: the general path (``_cast_column``) handles, or reports, everything the caster refuses.
    """
    if feature.is_string:
        categories = feature.categories

        def cast_string(value: Any) -> str:
            if type(value) is not str or (categories is not None and value not in categories):
                raise TypeError
            return value

        return cast_string
    if feature.dtype is np.bool_:

        def cast_bool(value: Any) -> bool:
            if type(value) is not bool:
                raise TypeError
            return value

        return cast_bool
    if feature.is_integer:

        def cast_integer(value: Any) -> int:
            kind = type(value)
            if kind is int or kind is float:
                number = float(value)  # integers travel through float64 in the general path too
                if number.is_integer():
                    return int(number)
            raise TypeError

        return cast_integer

    def cast_number(value: Any) -> float:
        kind = type(value)
        if kind is not int and kind is not float:
            raise TypeError
        return float(value)

    return cast_number


def _as_float_array(values: Sequence[Any]) -> np.ndarray | None:
    try:
        # float() per value beats np.asarray on text (~15 %), and accepts the same inputs.
        return np.fromiter(map(float, values), dtype=np.float64, count=len(values))
    except (TypeError, ValueError):
        return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _type_error(feature: Feature, bad: Iterable[tuple[int, Any]], first_row: int) -> InputError:
    bad = list(bad)
    expected = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true/false"}[
        feature.json_type
    ]
    shown = [
        {"row": first_row + i, "column": feature.name, "value": _jsonable(v)} for i, v in bad[:MAX_REPORTED_PROBLEMS]
    ]
    return InputError(
        f"column {feature.name!r} expects {expected}; {len(bad)} value(s) are not", columns=[feature.name], rows=shown
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _numpy_dtype(onnx_type: str, name: str) -> type:
    try:
        return _ONNX_TO_NUMPY[onnx_type]
    except KeyError:
        raise ValueError(f"input {name!r} has unsupported type {onnx_type}") from None


def _is_single_value(shape: Sequence[Any] | None) -> bool:
    """[N] or [N, 1] (or a width ONNX leaves open): one number per row."""
    if not shape or len(shape) == 1:
        return True
    return len(shape) == 2 and (shape[1] == 1 or not isinstance(shape[1], int))


def _is_matrix(shape: Sequence[Any]) -> bool:
    return len(shape) == 2 and not (isinstance(shape[1], int) and shape[1] == 1)


def _zipmap_key(row: Mapping[Any, float], name: str) -> Any:
    """ZipMap keys are str or int64; map a class name back to the key type the model uses."""
    if name in row:
        return name
    return int(name)
