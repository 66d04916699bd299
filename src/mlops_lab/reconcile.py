"""Reconcile: every input in the input bucket with exactly one current output, whatever the queue saw.

``reconcile`` covers what no failure record holds (an emulator killed mid-run, an event dropped): it compares the
input bucket with the output bucket and re-runs every input whose output is missing or stale (the input's ETag, which
each output records, tells), removes outputs a later run superseded, then clears the failure records it resolved.
``backlog`` is the same comparison in numbers, from listings only.

Uploads go on while it runs. An output is removed only if it is still the very object the plan (or the re-run) found
superseded: one HEAD just before the delete compares its ETag and the input ETag it records, and the delete itself is
conditional on that ETag (``If-Match``), so the fresh output of an upload processed meanwhile is never removed.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from mlops_lab import recovery
from mlops_lab.aws import Aws, is_not_found
from mlops_lab.contract import (
    ERRORS_PREFIX,
    INPUT_SUFFIX,
    META_INPUT_ETAG,
    PREDICTIONS_PREFIX,
    error_key,
    prediction_key,
)
from mlops_lab.settings import Settings

HEAD_WORKERS = 8  # outputs' metadata is read with this many HEADs in flight


# -- at a glance --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """What is left to recover, from listings only (cheap enough for `up` and `status`)."""

    inputs_without_output: int
    failures: int  # records in the failure queue (approximate, as SQS counts)


def backlog(settings: Settings, aws: Aws) -> Backlog:
    s3 = aws.client("s3")
    inputs = [key for key in list_objects(s3, settings.input_bucket) if key.endswith(INPUT_SUFFIX)]
    outputs = set(list_objects(s3, settings.output_bucket, PREDICTIONS_PREFIX)) | set(
        list_objects(s3, settings.output_bucket, ERRORS_PREFIX)
    )
    missing = sum(1 for key in inputs if prediction_key(key) not in outputs and error_key(key) not in outputs)
    queue = recovery.FailureQueue(settings, aws)
    counts = queue.sqs.get_queue_attributes(
        QueueUrl=queue.url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return Backlog(missing, sum(int(value) for value in counts.values()))


# -- reconcile ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    key: str
    etag: str  # without quotes
    last_modified: datetime
    size: int = 0
    input_etag: str | None = None  # outputs only: the ETag of the input they were written for


@dataclass(frozen=True)
class Action:
    """What reconcile does (or, in a dry run, would do) about one input key."""

    key: str
    action: str  # rerun | remove-error-report | remove-stale-predictions
    reason: str  # missing | stale | superseded


@dataclass
class ReconcileResult:
    inputs: int = 0
    up_to_date: int = 0
    actions: list[Action] = field(default_factory=list)
    reruns: list[recovery.Rerun] = field(default_factory=list)
    cleared_failures: int = 0  # failure records whose input now has its output
    kept: list[str] = field(default_factory=list)  # outputs to remove that were replaced (or went) meanwhile: left
    dry_run: bool = False


def is_current(output: StoredObject | None, source: StoredObject, *, recorded: bool = False) -> bool:
    """Was this output written for this very input? By the input ETag it records; an output without one (an older
    handler's) counts if it is not older than the input (the rule `jobs`, `predict` and the console show by), unless
    ``recorded`` is asked for: reconcile re-runs such an output, since re-running is always safe and an output whose
    metadata an emulator's crash lost cannot be told from a half-written one."""
    if output is None:
        return False
    if output.input_etag:
        return output.input_etag == source.etag
    return not recorded and output.last_modified >= source.last_modified


def plan(inputs: dict[str, StoredObject], outputs: dict[str, StoredObject]) -> list[Action]:
    """The actions that leave each input with exactly one current output (pure: the buckets' listings in, actions
    out)."""
    actions = []
    for key, source in sorted(inputs.items()):
        predictions, report = outputs.get(prediction_key(key)), outputs.get(error_key(key))
        good = predictions if is_current(predictions, source, recorded=True) else None
        bad = report if is_current(report, source, recorded=True) else None
        if good is None and bad is None:
            actions.append(Action(key, "rerun", "stale" if predictions or report else "missing"))
        elif good is not None and report is not None and (bad is None or report.last_modified <= good.last_modified):
            actions.append(Action(key, "remove-error-report", "superseded"))
        elif (
            bad is not None
            and predictions is not None
            and (good is None or predictions.last_modified < bad.last_modified)
        ):
            actions.append(Action(key, "remove-stale-predictions", "superseded"))
    return actions


def list_objects(s3: Any, bucket: str, prefix: str = "") -> dict[str, StoredObject]:
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = StoredObject(
                item["Key"], item["ETag"].strip('"'), item["LastModified"], int(item.get("Size", 0))
            )
    return found


def _with_input_etags(s3: Any, bucket: str, outputs: dict[str, StoredObject]) -> dict[str, StoredObject]:
    """The outputs with the input ETag each records (a HEAD each: listings carry no metadata)."""

    def head(item: StoredObject) -> StoredObject:
        return head_object(s3, bucket, item.key) or item  # (deleted since the listing: as listed)

    with ThreadPoolExecutor(HEAD_WORKERS) as pool:
        return {item.key: item for item in pool.map(head, outputs.values())}


def reconcile(
    settings: Settings, aws: Aws, *, dry_run: bool = False, on_rerun: Callable[[recovery.Rerun], None] = lambda _: None
) -> ReconcileResult:
    """Compare the input bucket with the output bucket and put right every difference (see ``plan``); then remove
    the failure records whose input now has its output."""
    s3 = aws.client("s3")
    inputs = {key: item for key, item in list_objects(s3, settings.input_bucket).items() if key.endswith(INPUT_SUFFIX)}
    outputs = _with_input_etags(
        s3,
        settings.output_bucket,
        list_objects(s3, settings.output_bucket, PREDICTIONS_PREFIX)
        | list_objects(s3, settings.output_bucket, ERRORS_PREFIX),
    )
    actions = plan(inputs, outputs)
    result = ReconcileResult(
        inputs=len(inputs), up_to_date=len(inputs) - len({a.key for a in actions}), actions=actions, dry_run=dry_run
    )
    if dry_run:
        return result
    for action in actions:
        removed = {"remove-error-report": error_key, "remove-stale-predictions": prediction_key}.get(action.action)
        if removed is not None and not delete_if_unchanged(s3, settings.output_bucket, outputs[removed(action.key)]):
            result.kept.append(removed(action.key))
    invoker = recovery.Invoker(settings, aws)
    queue = recovery.FailureQueue(settings, aws)
    function_arn = ""

    def one(action: Action) -> list[recovery.Rerun]:
        source = inputs[action.key]
        event = recovery.s3_event(
            aws.region, settings.input_bucket, action.key, size=source.size, etag=source.etag, partition=aws.partition
        )
        reruns = recovery.rerun_input(invoker, aws.region, settings.input_bucket, action.key, event=event)
        for rerun in reruns:
            if rerun.status == "failed":  # captured like any failed event, so `failures`/`redrive` see it
                queue.capture(function_arn, event, rerun.detail)
            else:  # the run wrote one output; one of the other kind, from an earlier upload, no longer stands
                written, other = (
                    (prediction_key(action.key), error_key(action.key))
                    if rerun.status == "ok"
                    else (error_key(action.key), prediction_key(action.key))
                )
                if not _remove_superseded(s3, settings, action.key, written, other):
                    result.kept.append(other)
            on_rerun(rerun)
        return reruns

    to_rerun = [action for action in actions if action.action == "rerun"]
    if to_rerun:
        function_arn = aws.client("lambda").get_function(FunctionName=settings.function_name)["Configuration"][
            "FunctionArn"
        ]
        with ThreadPoolExecutor(recovery.RERUN_WORKERS) as pool:
            for reruns in pool.map(one, to_rerun):
                result.reruns.extend(reruns)
    result.cleared_failures = _clear_resolved_failures(settings, s3, queue)
    return result


def delete_if_unchanged(s3: Any, bucket: str, planned: StoredObject) -> bool:
    """Delete ``planned`` if the object under its key is still that one (same ETag, same recorded input ETag: one
    HEAD), and only that one (the delete is conditional on the ETag). False when it was replaced (kept) or is gone."""
    now = head_object(s3, bucket, planned.key)
    if now is None or (now.etag, now.input_etag) != (planned.etag, planned.input_etag):
        return False
    try:
        s3.delete_object(Bucket=bucket, Key=planned.key, IfMatch=f'"{planned.etag}"')
    except ClientError as error:
        if is_not_found(error) or _precondition_failed(error):  # replaced or removed between the HEAD and the delete
            return False
        raise
    return True


def _precondition_failed(error: ClientError) -> bool:
    """412: the object is not the ETag's any more; 409: S3 saw a concurrent write or delete of it (either way, it
    was replaced or removed meanwhile)."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def _remove_superseded(s3: Any, settings: Settings, key: str, written_key: str, other_key: str) -> bool:
    """After a re-run wrote ``written_key``: remove the output of the other kind if it no longer stands (written for
    another version of the input than the one there now, or older than what the re-run wrote for it). An output of
    the other kind written for the input as it is now, by an upload processed meanwhile, stays. True unless one was
    kept."""
    other = head_object(s3, settings.output_bucket, other_key)
    if other is None:
        return True
    source = head_object(s3, settings.input_bucket, key)
    written = head_object(s3, settings.output_bucket, written_key)
    superseded = (
        source is None
        or not is_current(other, source)
        or (is_current(written, source) and written is not None and other.last_modified <= written.last_modified)
    )
    return superseded and delete_if_unchanged(s3, settings.output_bucket, other)


def _clear_resolved_failures(settings: Settings, s3: Any, queue: recovery.FailureQueue) -> int:
    """Remove failure records whose every input now has a current output (the failure no longer stands)."""
    failures = queue.hold_all(hold_s=60)
    resolved = {
        failure.message_id
        for failure in failures
        if failure.inputs and all(_has_current_output(settings, s3, bucket, key) for bucket, key in failure.inputs)
    }
    queue.delete(f for f in failures if f.message_id in resolved)
    queue.release(f for f in failures if f.message_id not in resolved)
    return len(resolved)


def _has_current_output(settings: Settings, s3: Any, bucket: str, key: str) -> bool:
    source = head_object(s3, bucket, key)
    if source is None:
        return False  # the input is gone: nothing will ever complete it, but a redrive will say so
    outputs = (
        head_object(s3, settings.output_bucket, output_key) for output_key in (prediction_key(key), error_key(key))
    )
    return any(is_current(output, source) for output in outputs)


def head_object(s3: Any, bucket: str, key: str) -> StoredObject | None:
    """The object's ETag, time and recorded input ETag (one HEAD), or None when it is not there."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if is_not_found(error):
            return None
        raise
    return StoredObject(
        key,
        head["ETag"].strip('"'),
        head["LastModified"],
        int(head.get("ContentLength", 0)),
        head.get("Metadata", {}).get(META_INPUT_ETAG),
    )
