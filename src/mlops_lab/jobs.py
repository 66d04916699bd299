"""Batch jobs, read from the buckets: each CSV in the input bucket and what became of it.

A job is an input object and its current output: predictions (rows, the model that scored them, the distribution of
its predictions) or an error report (the reason and the offending rows or columns), or nothing yet (pending). The
console (``mlops_lab.console``) and `mlops-lab jobs` both list them through :func:`list_jobs`; both upload through
:func:`submit`. Works the same on the emulator and on AWS: listings, HEADs and GETs only.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import IO, Any

from botocore.exceptions import ClientError

from mlops_lab.aws import Aws, is_not_found
from mlops_lab.contract import (
    ERRORS_PREFIX,
    INPUT_SUFFIX,
    META_MODEL_KIND,
    META_MODEL_NAME,
    META_MODEL_VERSION,
    META_ROWS,
    PREDICTIONS_PREFIX,
    error_key,
    prediction_key,
)
from mlops_lab.inference import PREDICTION_COLUMN, REGRESSOR
from mlops_lab.recovery import StoredObject
from mlops_lab.recovery import _list as list_objects
from mlops_lab.settings import Settings

HISTOGRAM_BINS = 10
SHOWN_OFFENDING_ROWS = 5
READ_WORKERS = 8
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,200}$")


@dataclass(frozen=True)
class Bar:
    label: str
    count: int


@dataclass(frozen=True)
class Distribution:
    """The predictions of a job: label counts (a classifier) or a histogram of values (a regressor)."""

    kind: str  # labels | histogram
    bars: list[Bar]

    @property
    def total(self) -> int:
        return sum(bar.count for bar in self.bars)


@dataclass
class Job:
    key: str
    uploaded: datetime
    size: int
    status: str  # ok | rejected | pending
    rows: int | None = None
    model: str = ""  # name and version that scored it
    seconds: float | None = None  # upload to output (from the objects' times, whole seconds on S3)
    output_uri: str = ""
    reason: str = ""
    columns: list[str] = field(default_factory=list)
    offending: list[dict[str, Any]] = field(default_factory=list)  # the first few offending rows
    distribution: Distribution | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["uploaded"] = self.uploaded.isoformat(timespec="seconds")
        return data


class Cache:
    """What was read from output objects, by key and ETag: an output is read once, however often jobs are listed."""

    def __init__(self, size: int = 512) -> None:
        self._items: dict[tuple[str, str], Any] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str, etag: str, load: Callable[[], Any]) -> Any:
        with self._lock:
            if (key, etag) in self._items:
                return self._items[(key, etag)]
        value = load()
        with self._lock:
            if len(self._items) >= self._size:
                self._items.pop(next(iter(self._items)))
            self._items[(key, etag)] = value
        return value


_shared_cache = Cache()


def list_jobs(settings: Settings, aws: Aws, *, limit: int = 20, cache: Cache | None = None) -> list[Job]:
    """The ``limit`` newest uploads (``*.csv`` in the input bucket) and what became of each, newest first."""
    cache = cache or _shared_cache
    s3 = aws.client("s3")
    inputs = [item for item in list_objects(s3, settings.input_bucket).values() if item.key.endswith(INPUT_SUFFIX)]
    inputs.sort(key=lambda item: (item.last_modified, item.key), reverse=True)
    inputs = inputs[:limit]
    outputs = list_objects(s3, settings.output_bucket, PREDICTIONS_PREFIX) | list_objects(
        s3, settings.output_bucket, ERRORS_PREFIX
    )
    if not inputs:
        return []
    with ThreadPoolExecutor(min(READ_WORKERS, len(inputs))) as pool:
        return list(pool.map(lambda item: _job(settings, s3, item, outputs, cache), inputs))


def _job(settings: Settings, s3: Any, source: StoredObject, outputs: dict[str, StoredObject], cache: Cache) -> Job:
    job = Job(source.key, source.last_modified, source.size, "pending")
    predictions, report = outputs.get(prediction_key(source.key)), outputs.get(error_key(source.key))
    current = [o for o in (predictions, report) if o is not None and o.last_modified >= source.last_modified]
    if not current:
        return job
    output = max(current, key=lambda o: o.last_modified)
    job.seconds = max(0.0, (output.last_modified - source.last_modified).total_seconds())
    job.output_uri = f"s3://{settings.output_bucket}/{output.key}"
    try:
        if output is report:
            job.status = "rejected"
            error = cache.get(output.key, output.etag, lambda: _read_json(s3, settings.output_bucket, output.key))
            job.reason = str(error.get("reason", ""))
            job.columns = [str(c) for c in error.get("columns", [])]
            job.offending = [row for row in error.get("rows", []) if isinstance(row, dict)][:SHOWN_OFFENDING_ROWS]
        else:
            job.status = "ok"
            read = cache.get(output.key, output.etag, lambda: _read_predictions(s3, settings.output_bucket, output.key))
            job.rows, job.model, job.distribution = read
    except ClientError as error:
        if not is_not_found(error):  # replaced between the listing and the read: the next refresh shows it
            raise
    return job


def _read_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return {"reason": "the error report is not JSON"}
    return data if isinstance(data, dict) else {}


def _read_predictions(s3: Any, bucket: str, key: str) -> tuple[int, str, Distribution]:
    response = s3.get_object(Bucket=bucket, Key=key)
    metadata = response.get("Metadata", {})
    model = " ".join(filter(None, (metadata.get(META_MODEL_NAME), metadata.get(META_MODEL_VERSION))))
    with response["Body"] as body:
        text = body.read().decode("utf-8", errors="replace")
    distribution = distribution_of(io.StringIO(text, newline=""), regressor=metadata.get(META_MODEL_KIND) == REGRESSOR)
    rows = int(metadata[META_ROWS]) if metadata.get(META_ROWS, "").isdigit() else distribution.total
    return rows, model, distribution


def distribution_of(source: IO[str], *, regressor: bool) -> Distribution:
    """The distribution of a predictions CSV's ``prediction`` column: label counts, or a histogram of numbers."""
    values = [row.get(PREDICTION_COLUMN, "") for row in csv.DictReader(source)]
    if not regressor:
        counts = Counter(values)
        return Distribution("labels", [Bar(label, count) for label, count in sorted(counts.items())])
    numbers = [float(value) for value in values if _is_number(value)]
    if not numbers:
        return Distribution("histogram", [])
    low, high = min(numbers), max(numbers)
    width = (high - low) / HISTOGRAM_BINS or 1.0
    counts = [0] * HISTOGRAM_BINS
    for number in numbers:
        counts[min(int((number - low) / width), HISTOGRAM_BINS - 1)] += 1
    return Distribution(
        "histogram", [Bar(f"{low + i * width:.4g}–{low + (i + 1) * width:.4g}", c) for i, c in enumerate(counts)]
    )


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


# -- upload -------------------------------------------------------------------------------------------------------


class UploadRefused(ValueError):
    """A file the console (or `jobs`) will not upload, and why."""


def check_key(key: str) -> str:
    """An input key the function will be invoked for: ``*.csv``, plain characters, no ``..``."""
    key = key.strip().lstrip("/")
    if not key.lower().endswith(INPUT_SUFFIX):
        raise UploadRefused(f"not a CSV file name: {key!r} (the function runs on *.csv uploads only)")
    if not KEY_PATTERN.match(key) or ".." in key.split("/"):
        raise UploadRefused(f"unusable key {key!r}: letters, digits, '.', '_', '-' and '/' only")
    return key


def submit(settings: Settings, aws: Aws, body: IO[bytes], key: str) -> str:
    """Upload a CSV to the input bucket as ``key`` (checked); earlier outputs of that key are removed first so the
    job shows as pending until the function writes the new one. Returns the input URI."""
    key = check_key(key)
    s3 = aws.client("s3")
    s3.delete_objects(
        Bucket=settings.output_bucket,
        Delete={"Objects": [{"Key": prediction_key(key)}, {"Key": error_key(key)}], "Quiet": True},
    )
    s3.upload_fileobj(body, settings.input_bucket, key, ExtraArgs={"ContentType": "text/csv"})
    return f"s3://{settings.input_bucket}/{key}"
