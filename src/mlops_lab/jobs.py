"""Batch jobs: submit a CSV, wait for what the function made of it, list the newest.

A job is an input object and its current output: predictions (rows, the model that scored them, the distribution of
its predictions) or an error report (the reason and the offending rows or columns), or nothing yet (pending).
Everything uploads through :func:`submit` (the console, `mlops-lab jobs`, `predict` by way of :func:`predict_file`)
and reads predictions through :func:`read_predictions`; the console and `mlops-lab jobs` list through
:func:`list_jobs`. Works the same on the emulator and on AWS.

An output is shown only if it answers the input as it is now: it records the ETag of the input it was written for
(``META_INPUT_ETAG``), which must be the input's current ETag (``reconcile.is_current``; an output of an older
handler, without one, counts when it is not older than the input). An output left from an earlier upload under the
same key, say one whose delete raced the new upload, is never shown or waited for as the new one's.

Why this is one module of some 450 lines: listing, submitting and waiting are three readings of one contract (an input
and its current output, by that rule); split, each part would carry its own copy of it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import ClientError

from mlops_lab import recovery
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
from mlops_lab.errors import ExitCode, LabError, Refused, TimedOut
from mlops_lab.inference import PREDICTION_COLUMN, REGRESSOR
from mlops_lab.reconcile import StoredObject, head_object, is_current, list_objects
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
    current = [
        output
        for output in (
            _headed(s3, settings.output_bucket, outputs.get(prediction_key(source.key))),
            _headed(s3, settings.output_bucket, outputs.get(error_key(source.key))),
        )
        if output is not None and is_current(output, source)
    ]
    if not current:
        return job
    output = max(current, key=lambda o: o.last_modified)
    job.seconds = max(0.0, (output.last_modified - source.last_modified).total_seconds())
    job.output_uri = f"s3://{settings.output_bucket}/{output.key}"
    try:
        if output.key == error_key(source.key):
            error = cache.get(
                output.key, output.etag, lambda: _read_json(s3, settings.output_bucket, output.key, output.etag)
            )
            job.status = "rejected"
            job.reason = str(error.get("reason", ""))
            job.columns = [str(c) for c in error.get("columns", [])]
            job.offending = [row for row in error.get("rows", []) if isinstance(row, dict)][:SHOWN_OFFENDING_ROWS]
        else:
            read = cache.get(
                output.key, output.etag, lambda: _read_predictions(s3, settings.output_bucket, output.key, output.etag)
            )
            job.status = "ok"
            job.rows, job.model, job.distribution = read.rows, read.model, read.distribution
    except ClientError as error:
        # Replaced (or removed) between the HEAD and the read: pending until the next refresh shows what is there.
        if not (is_not_found(error) or _precondition_failed(error)):
            raise
        job.seconds, job.output_uri = None, ""
    return job


def _headed(s3: Any, bucket: str, listed: StoredObject | None) -> StoredObject | None:
    """A listed output with the input ETag it records (listings carry no metadata: one HEAD), or None."""
    return None if listed is None else head_object(s3, bucket, listed.key)


def _precondition_failed(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in ("PreconditionFailed", "412")


def _read_json(s3: Any, bucket: str, key: str, etag: str) -> dict[str, Any]:
    body = s3.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')["Body"].read()
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return {"reason": "the error report is not JSON"}
    return data if isinstance(data, dict) else {}


def _read_predictions(s3: Any, bucket: str, key: str, etag: str) -> Predictions:
    response = s3.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')  # the object HEAD found current, or 412
    with response["Body"] as body:
        text = body.read().decode("utf-8", errors="replace")
    return read_predictions(io.StringIO(text, newline=""), response.get("Metadata", {}))


@dataclass(frozen=True)
class Predictions:
    """What a predictions output holds: its rows, the model that scored them and their distribution."""

    rows: int
    model: str  # name and version
    distribution: Distribution
    value_range: tuple[float, float] | None = None  # a regressor's smallest and largest prediction

    @property
    def label_counts(self) -> dict[str, int] | None:
        """A classifier's predictions by label (None for a regressor)."""
        return {bar.label: bar.count for bar in self.distribution.bars} if self.distribution.kind == "labels" else None


def read_predictions(source: IO[str], metadata: Mapping[str, str]) -> Predictions:
    """A predictions CSV (the function's output) and its S3 metadata, read once for every view of it."""
    model = " ".join(filter(None, (metadata.get(META_MODEL_NAME), metadata.get(META_MODEL_VERSION))))
    values = [row.get(PREDICTION_COLUMN, "") for row in csv.DictReader(source)]
    regressor = metadata.get(META_MODEL_KIND) == REGRESSOR
    distribution = distribution_of(values, regressor=regressor)
    rows = int(metadata[META_ROWS]) if metadata.get(META_ROWS, "").isdigit() else len(values)
    numbers = [float(value) for value in values if _is_number(value)] if regressor else []
    value_range = (min(numbers), max(numbers)) if numbers else None
    return Predictions(rows, model, distribution, value_range)


def distribution_of(values: list[str], *, regressor: bool) -> Distribution:
    """The distribution of a predictions CSV's ``prediction`` column: label counts, or a histogram of numbers."""
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


class UploadRefused(Refused, ValueError):
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
    """Upload a CSV to the input bucket as ``key`` (checked); earlier outputs of that key are removed first, so the
    job shows as pending (and a wait for it cannot be satisfied by an old output) until the function writes the new
    one. Returns the input URI."""
    key = check_key(key)
    s3 = aws.client("s3")
    s3.delete_objects(
        Bucket=settings.output_bucket,
        Delete={"Objects": [{"Key": prediction_key(key)}, {"Key": error_key(key)}], "Quiet": True},
    )
    s3.upload_fileobj(body, settings.input_bucket, key, ExtraArgs={"ContentType": "text/csv"})
    return f"s3://{settings.input_bucket}/{key}"


# -- wait for one ---------------------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    input_uri: str
    output_uri: str
    status: str  # ok | rejected
    seconds: float
    local_path: Path
    rows: int = 0
    label_counts: dict[str, int] | None = None  # a classifier's predictions
    value_range: tuple[float, float] | None = None  # a regressor's
    model: str = ""  # the name and version that scored it
    error: dict | None = None


class PredictTimeout(TimedOut):
    """No output and no failure record within the wait."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message} The function's log: `mlops-lab logs function`.")


class PredictSuperseded(LabError):
    """Another upload replaced the input while waiting: the output that comes answers that file, not this one."""

    exit_code = ExitCode.CONFLICT


class PredictFailed(LabError):
    """The function failed on the upload after its retries: the event is in the failure queue."""

    exit_code = ExitCode.FUNCTION_FAILED

    def __init__(self, failure: recovery.Failure) -> None:
        self.failure = failure
        super().__init__(
            f"the function failed on {', '.join(failure.input_uris)} after {failure.attempts or '?'} attempt(s): "
            f"{failure.error}. The event is kept in the failure queue: fix the cause, then `mlops-lab redrive`. "
            "Logs: `mlops-lab logs function`."
        )


FAILURE_CHECK_S = 2.0  # while waiting for an output, how often to look in the failure queue as well


def predict_file(
    settings: Settings,
    aws: Aws,
    path: Path,
    *,
    key: str | None = None,
    out_dir: Path | None = None,
    timeout: float = 300,
    on_wait: Callable[[float], None] = lambda _: None,
) -> BatchResult:
    """Upload a CSV (:func:`submit`) and wait for the function's predictions or error report, downloaded into
    ``out_dir``; PredictFailed as soon as the event lands in the failure queue instead.

    Only an output written for this very upload is taken: it records this upload's ETag and is not older than it.
    One left from an earlier upload under the same key (its delete in ``submit`` raced a late write) is waited past.
    """
    s3 = aws.client("s3")
    started = time.perf_counter()
    with path.open("rb") as body:
        input_uri = submit(settings, aws, body, key or path.name)
    key = input_uri.removeprefix(f"s3://{settings.input_bucket}/")
    uploaded = head_object(s3, settings.input_bucket, key)
    if uploaded is None:
        raise PredictSuperseded(f"{input_uri} was deleted as soon as it was uploaded: nothing to wait for")
    out_dir = out_dir or settings.state_dir / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = started + timeout
    next_failure_check = started + FAILURE_CHECK_S
    while True:
        if time.perf_counter() >= next_failure_check:
            failed = _failure_of(settings, aws, uploaded)
            if failed is not None:
                raise PredictFailed(failed)
            _check_still_ours(s3, settings, uploaded, input_uri)
            next_failure_check = time.perf_counter() + FAILURE_CHECK_S
        for found in (prediction_key(key), error_key(key)):
            output = head_object(s3, settings.output_bucket, found)
            if output is None or not _answers(output, uploaded):
                continue
            seconds = time.perf_counter() - started
            local = out_dir / Path(found).name
            metadata = _download_exactly(s3, settings.output_bucket, output, local)
            if metadata is None:  # replaced between the HEAD and the read: look again
                continue
            base = BatchResult(input_uri, f"s3://{settings.output_bucket}/{found}", "ok", seconds, local)
            return _result(base, found == error_key(key), metadata)
        if time.perf_counter() > deadline:
            raise PredictTimeout(
                f"no predictions for {input_uri} after {timeout:.0f} s and no failure recorded: is the notification in "
                f"place (`mlops-lab bootstrap`)? CloudWatch group /aws/lambda/{settings.function_name}."
            )
        on_wait(time.perf_counter() - started)
        time.sleep(0.1)


def _answers(output: StoredObject, uploaded: StoredObject) -> bool:
    """Was ``output`` written for this upload? Current for it (its recorded input ETag, or its time for an output
    without one) and not older than it: an output of an earlier upload of the same bytes has the same input ETag."""
    return is_current(output, uploaded) and output.last_modified >= uploaded.last_modified


def _failure_of(settings: Settings, aws: Aws, uploaded: StoredObject) -> recovery.Failure | None:
    """The failure record of this upload, if there is one now (as ``recovery.find_failure``, but never the record
    of an earlier upload under the same key: the event's ETag, else its time, tells them apart)."""
    try:
        queue = recovery.FailureQueue(settings, aws)
    except recovery.RecoveryError:  # bootstrapped before failures were captured: nothing to find
        return None
    failures = queue.hold_all(hold_s=5, wait_s=0)
    queue.release(failures)
    return next((failure for failure in failures if _failed_on(failure, settings.input_bucket, uploaded)), None)


def _failed_on(failure: recovery.Failure, bucket: str, uploaded: StoredObject) -> bool:
    if (bucket, uploaded.key) not in failure.inputs:
        return False
    for record in (failure.event or {}).get("Records", []):
        details = record.get("s3", {}).get("object", {})
        if urllib.parse.unquote_plus(str(details.get("key", ""))) == uploaded.key and details.get("eTag"):
            return str(details["eTag"]).strip('"') == uploaded.etag
    when = failure.when
    if when is None:
        return True
    return (when if when.tzinfo else when.replace(tzinfo=UTC)) >= uploaded.last_modified


def _check_still_ours(s3: Any, settings: Settings, uploaded: StoredObject, input_uri: str) -> None:
    now = head_object(s3, settings.input_bucket, uploaded.key)
    if now is None or now.etag != uploaded.etag or now.last_modified != uploaded.last_modified:
        raise PredictSuperseded(
            f"{input_uri} was {'deleted' if now is None else 'replaced by another upload'} while waiting for its "
            "predictions: what the function writes now answers that, not your file. Run `predict` again."
        )


def _download_exactly(s3: Any, bucket: str, output: StoredObject, local: Path) -> dict[str, str] | None:
    """The object HEAD found (``If-Match`` its ETag) into ``local``; its metadata, or None if it was replaced."""
    try:
        response = s3.get_object(Bucket=bucket, Key=output.key, IfMatch=f'"{output.etag}"')
    except ClientError as error:
        if is_not_found(error) or _precondition_failed(error):
            return None
        raise
    with response["Body"] as body, local.open("wb") as sink:
        shutil.copyfileobj(body, sink, 1024 * 1024)
    return response.get("Metadata", {})


def _result(result: BatchResult, rejected: bool, metadata: Mapping[str, str]) -> BatchResult:
    if rejected:
        result.status, result.error = "rejected", json.loads(result.local_path.read_text())
        return result
    with result.local_path.open(newline="") as handle:
        read = read_predictions(handle, metadata)
    result.rows, result.model = read.rows, read.model
    result.label_counts, result.value_range = read.label_counts, read.value_range
    return result
