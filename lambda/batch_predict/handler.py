"""Batch predictions: a CSV landing in the input bucket becomes a predictions CSV in the output bucket.

For each S3 record: read ``s3://<input>/<key>``, score it with the model published at ``s3://<model bucket>/<model key>``
and write ``s3://<output>/predictions/<key>`` (the input columns + ``prediction`` + ``probability_<class>``). The key is
derived from the input key, so a redelivered event overwrites rather than duplicates. Input the model cannot score
gets ``s3://<output>/errors/<key>.json`` instead, saying why; the input object is never modified.

Whose fault a failure is decides what happens to it. Only the file's own problems (``InputError``: not a CSV, bad
columns or values, not UTF-8, malformed CSV, too large, gone before it was read) become an error report. Everything
else (no memory, /tmp full, S3 failing to serve the input or to take the output, a model that cannot be read or
loaded) is raised: Lambda retries the event, then sends it to the failure queue (`mlops-lab failures`/`redrive`),
and no error report blames the file.

Runs on the emulator and on AWS alike: the layer brings numpy, onnxruntime and ``mlops_lab.inference``; boto3 comes
from the runtime.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import ClientError

from mlops_lab.contract import (
    META_INPUT_ETAG,
    META_MODEL_ETAG,
    META_MODEL_KIND,
    META_MODEL_NAME,
    META_MODEL_VERSION,
    META_ROWS,
    error_key,
    prediction_key,
)
from mlops_lab.inference import (
    PREDICTION_COLUMN,
    REGRESSOR,
    InputError,
    TabularModel,
    probability_column,
    score_csv,
)


@dataclass(frozen=True)
class Config:
    """What bootstrap sets in the function's environment (``bootstrap.function_environment``)."""

    output_bucket: str
    model_bucket: str
    model_key: str
    max_input_bytes: int = 512 * 1024 * 1024
    chunk_rows: int = 8192
    chunk_bytes: int = 8 * 1024 * 1024  # a chunk also ends at the line that reaches this much text (wide rows)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Config:
        return cls(
            output_bucket=env.get("OUTPUT_BUCKET", ""),
            model_bucket=env.get("MODEL_BUCKET", ""),
            model_key=env.get("MODEL_KEY", ""),
            max_input_bytes=int(env.get("MAX_INPUT_BYTES", cls.max_input_bytes)),
            chunk_rows=int(env.get("CHUNK_ROWS", cls.chunk_rows)),
            chunk_bytes=int(env.get("CHUNK_BYTES", cls.chunk_bytes)),
        )


_request_id: str | None = None  # the invocation being handled (Lambda runs one at a time per process)


class JsonFormatter(logging.Formatter):
    """One JSON object a line; each carries the invocation's request id, as AWS's own log lines do, so
    `mlops-lab logs function` (or CloudWatch Logs Insights) can follow one invocation."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"level": record.levelname, "message": record.getMessage()}
        if _request_id:
            entry["request_id"] = _request_id
        entry |= getattr(record, "fields", {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


logger = logging.getLogger("batch_predict")
if not logger.handlers:
    _stream = logging.StreamHandler(sys.stdout)
    _stream.setFormatter(JsonFormatter())
    logger.addHandler(_stream)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the Lambda runtime's own root handler would print every line twice


def log(level: int, message: str, **fields: Any) -> None:
    logger.log(level, message, extra={"fields": fields})


DOWNLOAD_CHUNK_BYTES = 1024 * 1024  # the input is streamed to /tmp in blocks of this size
# What scoring adds to a row at most, beyond the row's own text: a label of unknown length (a classifier without
# class names), a regressor's number (repr of a float64), each probability ("," + "0.123456", one spare).
UNKNOWN_LABEL_BYTES = 64
NUMBER_BYTES = 25
PROBABILITY_BYTES = 10


# -- pure helpers -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str
    size: int | None
    etag: str | None = None  # as the event reported it (the handler records the ETag of what it actually read)


def objects_created(event: dict[str, Any]) -> list[S3Object]:
    """Every ObjectCreated record of an S3 event (keys arrive URL-encoded, spaces as '+')."""
    found = []
    for record in event.get("Records", []):
        if not str(record.get("eventName", "ObjectCreated")).startswith("ObjectCreated"):
            continue
        s3 = record.get("s3", {})
        key = urllib.parse.unquote_plus(s3.get("object", {}).get("key", ""))
        bucket = s3.get("bucket", {}).get("name", "")
        if bucket and key:
            details = s3.get("object", {})
            found.append(S3Object(bucket, key, details.get("size"), details.get("eTag")))
    return found


# -- the model, cached across warm invocations --------------------------------------------------------------------


class ModelUnavailable(RuntimeError):
    """The published model cannot be loaded: not the input's fault, so the event is retried, then kept."""


class ModelCache:
    """Keeps the loaded model between invocations; reloads when the published object's ETag changes."""

    def __init__(self) -> None:
        self.etag: str | None = None
        self.model: TabularModel | None = None

    def get(self, s3: Any, bucket: str, key: str) -> tuple[TabularModel, str]:
        """The live model (S3 errors reading it are raised as they are); ModelUnavailable when it does not load."""
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"]
        if self.model is None or etag != self.etag:
            started = time.perf_counter()
            body = s3.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"].read()
            try:
                loaded = TabularModel(body)
            except MemoryError:
                raise
            except Exception as error:  # ORT's own types (a corrupt file), ValueError (a layout the core cannot serve)
                raise ModelUnavailable(
                    f"the model s3://{bucket}/{key} (ETag {etag}) cannot be loaded: {type(error).__name__}: {error}"
                ) from error
            self.model, self.etag = loaded, etag
            log(
                logging.INFO,
                "model loaded",
                model=f"s3://{bucket}/{key}",
                etag=etag,
                seconds=round(time.perf_counter() - started, 3),
                metadata_version=self.model.metadata.get("version"),
            )
        assert self.model is not None
        return self.model, etag


_models = ModelCache()
_s3 = None


def s3_client() -> Any:
    global _s3
    if _s3 is None:  # created on first use, so importing this module needs no AWS configuration (unit tests)
        _s3 = boto3.client("s3")
    return _s3


# -- one object ---------------------------------------------------------------------------------------------------


def process(s3: Any, obj: S3Object, config: Config, models: ModelCache) -> dict[str, Any]:
    """Score one object: predictions, or an error report when (and only when) the input is at fault (InputError).
    Any other failure is raised as it is, and nothing is written."""
    started = time.perf_counter()
    source = f"s3://{obj.bucket}/{obj.key}"
    error_uri = f"s3://{config.output_bucket}/{error_key(obj.key)}"
    read: dict[str, str] = {}  # the input's ETag once it is known: recorded on whichever output is written
    try:
        result = _score_object(s3, obj, config, models, read)
    except InputError as problem:
        report = {"input": source, **problem.to_dict()}
        s3.put_object(
            Bucket=config.output_bucket,
            Key=error_key(obj.key),
            Body=json.dumps(report, indent=2).encode(),
            ContentType="application/json",
            Metadata=_input_metadata(read.get("etag") or obj.etag),
        )
        log(
            logging.WARNING,
            "input rejected",
            input=source,
            reason=problem.reason,
            error=error_uri,
        )
        return {
            "input": source,
            "status": "rejected",
            "reason": problem.reason,
            "error": error_uri,
        }
    result["seconds"] = round(time.perf_counter() - started, 3)
    log(logging.INFO, "predictions written", **result)
    return result


def _input_metadata(etag: str | None) -> dict[str, str]:
    return {META_INPUT_ETAG: etag.strip('"')} if etag else {}


def _score_object(s3: Any, obj: S3Object, config: Config, models: ModelCache, read: dict[str, str]) -> dict[str, Any]:
    if not obj.key.lower().endswith(".csv"):
        raise InputError(f"not a CSV file: {obj.key!r} (expected a .csv key)")
    if obj.size is not None and obj.size > config.max_input_bytes:
        raise InputError(_too_large(obj.size, config))
    model, etag = models.get(s3, config.model_bucket, config.model_key)
    with tempfile.TemporaryDirectory(prefix="batch-predict-") as tmp:
        source_path, output_path = os.path.join(tmp, "input.csv"), os.path.join(tmp, "output.csv")
        counted = _download(s3, obj, config, source_path, read)
        _check_room(tmp, counted.size, output_bound(model, counted))
        # Only what the file itself causes becomes an InputError (the model refusing a value is one already, raised
        # by the core); MemoryError, OSError (/tmp) and anything else unforeseen propagate: retried, never blamed on
        # the file.
        try:
            # utf-8-sig: spreadsheet exports often start with a byte-order mark.
            with (
                open(source_path, encoding="utf-8-sig", newline="") as source,
                open(output_path, "w", encoding="utf-8", newline="") as sink,
            ):
                summary = score_csv(model, source, sink, chunk_rows=config.chunk_rows, chunk_chars=config.chunk_bytes)
        except UnicodeDecodeError as error:
            raise InputError(
                f"not UTF-8 text ({error.reason} at byte {error.start} of a block): is this a CSV file?"
            ) from None
        except csv.Error as error:  # malformed CSV: a field over the csv module's limit (128 KiB), bad quoting
            raise InputError(f"could not read this file as CSV: {error}") from None
        metadata = {
            META_MODEL_ETAG: etag.strip('"'),
            META_MODEL_KIND: model.kind,
            META_ROWS: str(summary.rows),
            **_input_metadata(read["etag"]),
        }
        for key, stamped in ((META_MODEL_NAME, "model_name"), (META_MODEL_VERSION, "version")):
            if model.metadata.get(stamped):  # the model's own identity, as promote/publish stamped it
                metadata[key] = model.metadata[stamped]
        s3.upload_file(
            output_path,
            config.output_bucket,
            prediction_key(obj.key),
            ExtraArgs={"ContentType": "text/csv", "Metadata": metadata},
        )
    return {
        "input": f"s3://{obj.bucket}/{obj.key}",
        "status": "ok",
        "output": f"s3://{config.output_bucket}/{prediction_key(obj.key)}",
        "rows": summary.rows,
        **({"labels": summary.label_counts} if summary.label_counts else {}),
        **({"range": list(summary.value_range)} if summary.value_range else {}),
    }


def _too_large(size: int, config: Config) -> str:
    return f"file too large: {size:,} bytes > limit of {config.max_input_bytes:,} bytes (split it)"


@dataclass(frozen=True)
class Counted:
    """What the download counted in the input, on the way: what bounds the size of its predictions."""

    size: int
    lines: int  # line feeds
    quotes: int = 0  # '"' characters
    commas: int = 0


def _download(s3: Any, obj: S3Object, config: Config, path: str, read: dict[str, str]) -> Counted:
    """The object as it is now (one GET: its size and ETag come with the body) into ``path``; its ETag into ``read``.
    Returns its size and its line feeds, quotes and commas (counted on the way: they bound the output's size).

    Its being gone is the one S3 answer that is the input's fault (InputError); any other error, or a body that
    breaks off, is raised as it is."""
    try:
        response = s3.get_object(Bucket=obj.bucket, Key=obj.key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            raise InputError("the object no longer exists (deleted before it was processed)") from None
        raise
    read["etag"] = response["ETag"]
    body = response["Body"]
    size = lines = quotes = commas = 0
    with body:
        if response["ContentLength"] > config.max_input_bytes:  # replaced by a larger file since the event
            raise InputError(_too_large(response["ContentLength"], config))
        with open(path, "wb") as sink:
            while block := body.read(DOWNLOAD_CHUNK_BYTES):
                sink.write(block)
                size += len(block)
                lines += block.count(b"\n")
                quotes += block.count(b'"')
                commas += block.count(b",")
    return Counted(size, lines, quotes, commas)


def output_bound(model: TabularModel, counted: Counted) -> int:
    """The most bytes the predictions of the input ``counted`` can take: its rows as they came, plus the prediction
    and probability columns on every row and the header. A file with quotes may have chunks written field by field
    (a quoted field spanning lines), where a field can grow by its quotes doubled and two around it: counted too."""
    columns = len(model.classes)
    if model.kind == REGRESSOR:
        label = NUMBER_BYTES
    elif model.classes:
        label = max(len(_quoted(label).encode()) for label in model.classes)
    else:
        label = UNKNOWN_LABEL_BYTES
    added = (PREDICTION_COLUMN, *map(probability_column, model.classes))
    header = sum(len(_quoted(name).encode()) + 1 for name in added)
    rows = counted.lines + 1
    requoted = counted.quotes + 2 * (counted.commas + rows) if counted.quotes else 0
    return counted.size + rows * (1 + label + columns * PROBABILITY_BYTES) + header + requoted


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text


def _check_room(tmp: str, size: int, output_bytes: int) -> None:
    """Will the output fit on /tmp beside the input? A file whose output could not fit even in an empty /tmp is
    too large for this function (InputError: split it); one that does not fit in what is free now is not the file's
    fault (OSError ENOSPC: the event is retried)."""
    room = shutil.disk_usage(tmp)
    if output_bytes > room.total - size:
        raise InputError(
            f"file too large for this function: its predictions can take up to {output_bytes:,} bytes beside the "
            f"{size:,}-byte input, and the function's /tmp holds {room.total:,} bytes (split it)"
        )
    if output_bytes > room.free:
        raise OSError(
            errno.ENOSPC,
            f"no room on /tmp for the predictions ({output_bytes:,} bytes needed at most, {room.free:,} free)",
        )


def handle(event: dict[str, Any], config: Config, s3: Any, models: ModelCache) -> dict[str, Any]:
    """Score every created object in the event; one bad file never stops the others. A failure that is not the
    input's fault is raised once the other objects are done (Lambda then retries the event, and its outputs are
    keyed by input, so the objects already done are overwritten, never duplicated)."""
    results, failures = [], []
    for obj in objects_created(event):
        try:
            results.append(process(s3, obj, config, models))
        except Exception as error:
            log(
                logging.ERROR,
                "processing failed (not the input's fault: the event will be retried, then kept in the failure queue)",
                input=f"s3://{obj.bucket}/{obj.key}",
                error=f"{type(error).__name__}: {error}",
            )
            failures.append(error)
    if failures:
        raise failures[0]
    return {"results": results}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point: this process's configuration, client and warm model cache."""
    global _request_id
    _request_id = getattr(context, "aws_request_id", None)
    try:
        return handle(event, Config.from_env(), s3_client(), _models)
    finally:
        _request_id = None
