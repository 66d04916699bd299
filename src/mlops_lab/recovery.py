"""Every upload ends in one output or one captured failure: the failure queue, and re-running an input.

S3 invokes the function asynchronously. An event the function fails on (or that stays throttled) is retried, then
Lambda sends it to the failure queue (bootstrap sets that up): ``list_failures`` lists those, ``redrive`` re-runs
them and removes each that then succeeds. What no queue saw is ``mlops_lab.reconcile``'s, with the same re-run.

Re-running means invoking the function synchronously with the S3 event it would have received, a few at a time. It
is always safe: outputs are keyed by their input, so a second run overwrites instead of duplicating.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError

from mlops_lab.aws import Aws, error_code, is_not_found
from mlops_lab.errors import NotRunning
from mlops_lab.settings import Settings

# Re-runs at a time: well under the account's concurrency (a new AWS account has 10, the emulator is set the same),
# so the uploads still arriving keep room.
RERUN_WORKERS = 4
THROTTLE_PATIENCE_S = 120  # how long one re-run keeps retrying while the function is throttled


# -- re-running one input -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rerun:
    """One synchronous run of the function on one input: its outcome as the handler reported it."""

    bucket: str
    key: str
    status: str  # ok | rejected | failed
    detail: str = ""


def s3_event(
    region: str, bucket: str, key: str, *, size: int | None = None, etag: str | None = None, partition: str = "aws"
) -> dict:
    """The ObjectCreated event S3 sends for ``key`` (keys arrive URL-encoded, as from S3)."""
    details: dict[str, Any] = {"key": urllib.parse.quote_plus(key, safe="/")}
    if size is not None:
        details["size"] = size
    if etag:
        details["eTag"] = etag.strip('"')
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": region,
                "eventTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket, "arn": f"arn:{partition}:s3:::{bucket}"}, "object": details},
            }
        ]
    }


def event_inputs(event: dict) -> list[tuple[str, str]]:
    """(bucket, key) of each object an S3 event names."""
    found = []
    for record in event.get("Records", []) if isinstance(event, dict) else []:
        s3 = record.get("s3", {})
        bucket, key = s3.get("bucket", {}).get("name"), s3.get("object", {}).get("key")
        if bucket and key:
            found.append((bucket, urllib.parse.unquote_plus(key)))
    return found


class Invoker:
    """Synchronous invokes of the function, waiting out throttling (it is shared with the uploads still arriving)."""

    def __init__(self, settings: Settings, aws: Aws) -> None:
        self.settings = settings
        # A run can take the function's whole timeout; the client must wait that long for the answer.
        config = Config(read_timeout=settings.lambda_timeout_s + 30, retries={"mode": "standard", "max_attempts": 3})
        self.client = aws.client("lambda", config=config)

    def run(self, event: dict) -> tuple[str, dict | str]:
        """("ok", the handler's answer) or ("failed", why)."""
        deadline = time.monotonic() + THROTTLE_PATIENCE_S
        delay = 0.5
        while True:
            try:
                response = self.client.invoke(
                    FunctionName=self.settings.function_name,
                    InvocationType="RequestResponse",
                    Payload=json.dumps(event).encode(),
                )
                break
            except ClientError as error:
                if error_code(error) != "TooManyRequestsException" or time.monotonic() > deadline:
                    return "failed", f"{error_code(error)}: {error}"
                time.sleep(delay)
                delay = min(delay * 2, 5)
        payload = response["Payload"].read()
        try:
            answer = json.loads(payload or b"null")
        except json.JSONDecodeError:
            answer = payload.decode(errors="replace")
        if response.get("FunctionError"):
            return "failed", _error_text(answer)
        return "ok", answer


def rerun_input(invoker: Invoker, region: str, bucket: str, key: str, event: dict | None = None) -> list[Rerun]:
    status, answer = invoker.run(event or s3_event(region, bucket, key))
    if status == "failed":
        return [Rerun(b, k, "failed", str(answer)) for b, k in (event_inputs(event) if event else [(bucket, key)])]
    results = answer.get("results", []) if isinstance(answer, dict) else []
    reruns = []
    for result in results:
        source = result.get("input", "").removeprefix("s3://")
        rerun_bucket, _, rerun_key = source.partition("/")
        detail = f"{result.get('rows', 0):,} rows" if result.get("status") == "ok" else result.get("reason", "")
        reruns.append(Rerun(rerun_bucket or bucket, rerun_key or key, result.get("status", "failed"), detail))
    return reruns or [Rerun(bucket, key, "failed", f"the function answered {answer!r}")]


def _error_text(payload: Any) -> str:
    """The error a function (or Lambda itself) reported: its type and message."""
    if not isinstance(payload, dict):
        return str(payload)
    kind = payload.get("errorType") or payload.get("__type") or "Error"
    message = payload.get("errorMessage") or payload.get("message") or json.dumps(payload)
    return f"{kind}: {message}"


# -- the failure queue --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One failed event in the failure queue (Lambda's on-failure record)."""

    message_id: str
    receipt_handle: str
    inputs: tuple[tuple[str, str], ...]  # (bucket, key) of each object the event named
    error: str
    attempts: int | None
    when: datetime | None
    event: dict | None  # the original event (None when the message is not a Lambda failure record)

    @property
    def input_uris(self) -> list[str]:
        return [f"s3://{bucket}/{key}" for bucket, key in self.inputs]


def failure_from_message(message: dict) -> Failure:
    """Read Lambda's on-failure record: ``requestPayload`` (the event), ``responsePayload`` (the error),
    ``requestContext.approximateInvokeCount``; when it failed is the record's timestamp (else when it was queued)."""
    try:
        record = json.loads(message.get("Body", ""))
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        record = {}
    event = record.get("requestPayload") if isinstance(record.get("requestPayload"), dict) else None
    sent = message.get("Attributes", {}).get("SentTimestamp")
    when = _parse_time(record.get("timestamp")) or (
        datetime.fromtimestamp(int(sent) / 1000, UTC) if sent and sent.isdigit() else None
    )
    error = (
        _error_text(record.get("responsePayload"))
        if record
        else "not a Lambda failure record: " + message.get("Body", "")[:200]
    )
    if record and not record.get("responsePayload"):
        condition = record.get("requestContext", {}).get("condition") or "failed"
        error = f"{condition}: {record.get('responseContext', {}).get('functionError') or 'no response'}"
    attempts = record.get("requestContext", {}).get("approximateInvokeCount")
    return Failure(
        message_id=message["MessageId"],
        receipt_handle=message["ReceiptHandle"],
        inputs=tuple(event_inputs(event or {})),
        error=error,
        attempts=attempts if isinstance(attempts, int) else None,
        when=when,
        event=event,
    )


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class FailureQueue:
    """The failure queue, read without consuming: messages are held while looked at, then released (or deleted)."""

    def __init__(self, settings: Settings, aws: Aws) -> None:
        self.sqs = aws.client("sqs")
        self.name = settings.failure_queue_name
        try:
            self.url = self.sqs.get_queue_url(QueueName=self.name)["QueueUrl"]
        except ClientError as error:
            if is_not_found(error):
                raise RecoveryError(f"no failure queue {self.name}: run `mlops-lab bootstrap` first") from None
            raise

    def hold_all(self, hold_s: int, *, wait_s: int = 1) -> list[Failure]:
        """Every message now in the queue, each hidden from other readers for ``hold_s`` s (or until released)."""
        failures: dict[str, Failure] = {}
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=hold_s,
                WaitTimeSeconds=wait_s,  # a long poll asks every SQS server; a short one may miss some
                AttributeNames=["SentTimestamp"],
            ).get("Messages", [])
            if not batch:
                return sorted(failures.values(), key=lambda f: f.when or datetime.min.replace(tzinfo=UTC))
            for message in batch:
                failures[message["MessageId"]] = failure_from_message(message)

    def release(self, failures: Iterable[Failure]) -> None:
        for chunk in _chunks(list(failures), 10):
            self.sqs.change_message_visibility_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": f.receipt_handle, "VisibilityTimeout": 0}
                    for i, f in enumerate(chunk)
                ],
            )

    def delete(self, failures: Iterable[Failure]) -> None:
        for chunk in _chunks(list(failures), 10):
            self.sqs.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(i), "ReceiptHandle": f.receipt_handle} for i, f in enumerate(chunk)],
            )

    def capture(self, function_arn: str, event: dict, error: str) -> None:
        """Record a failure the way Lambda's on-failure destination does (a re-run that failed lands here too)."""
        kind, _, message = error.partition(": ")
        record = {
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "requestContext": {
                "functionArn": function_arn,
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 1,
            },
            "requestPayload": event,
            "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
            "responsePayload": {"errorType": kind, "errorMessage": message or kind},
        }
        self.sqs.send_message(QueueUrl=self.url, MessageBody=json.dumps(record))


class RecoveryError(NotRunning):
    pass


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def list_failures(settings: Settings, aws: Aws) -> list[Failure]:
    """The failure queue's records, oldest first; they stay in the queue."""
    queue = FailureQueue(settings, aws)
    failures = queue.hold_all(hold_s=30)
    queue.release(failures)
    return failures


def find_failure(settings: Settings, aws: Aws, bucket: str, key: str) -> Failure | None:
    """The failure record of this input, if there is one now (a quick look: a short poll, released at once)."""
    try:
        queue = FailureQueue(settings, aws)
    except RecoveryError:  # bootstrapped before failures were captured: nothing to find
        return None
    failures = queue.hold_all(hold_s=5, wait_s=0)
    queue.release(failures)
    return next((failure for failure in failures if (bucket, key) in failure.inputs), None)


@dataclass
class RedriveResult:
    completed: list[tuple[Failure, list[Rerun]]] = field(default_factory=list)  # removed from the queue
    still_failing: list[tuple[Failure, list[Rerun]]] = field(default_factory=list)  # kept in the queue


def redrive(settings: Settings, aws: Aws, *, on_rerun: Callable[[Rerun], None] = lambda _: None) -> RedriveResult:
    """Re-run every failed event; remove each that now completes (predictions or an error report), keep the rest."""
    queue = FailureQueue(settings, aws)
    # Held for as long as re-running all of them could take, so no other reader redrives them meanwhile.
    failures = queue.hold_all(hold_s=min(43200, settings.lambda_timeout_s * 4 + 120))
    invoker = Invoker(settings, aws)
    result = RedriveResult()

    def one(failure: Failure) -> tuple[Failure, list[Rerun]]:
        if failure.event is None or not failure.inputs:
            return failure, [Rerun("", "", "failed", failure.error)]
        reruns = rerun_input(invoker, aws.region, *failure.inputs[0], event=failure.event)
        for rerun in reruns:
            on_rerun(rerun)
        return failure, reruns

    try:
        with ThreadPoolExecutor(RERUN_WORKERS) as pool:
            for failure, reruns in pool.map(one, failures):
                done = all(rerun.status in ("ok", "rejected") for rerun in reruns)
                (result.completed if done else result.still_failing).append((failure, reruns))
    finally:
        completed = {failure.message_id for failure, _ in result.completed}
        queue.delete(f for f in failures if f.message_id in completed)
        queue.release(f for f in failures if f.message_id not in completed)
    return result
