"""Running one Batch Transform job: its inputs read as streams, its mini-batches sent to its instances, its
``.out`` files written whole or not at all (see ``transform_jobs.py`` for the API and the job's life).

The instances are worker processes (``workers.py``: the model served by the lab's serving code), ``InstanceCount``
of them, capped at this machine's cores (the job's progress says so). Every input object is split into records and
packed into mini-batches by AWS's rules (``transform_records.py``); the mini-batches of all files go, in order, to
whichever instance has a free slot (``MaxConcurrentTransforms`` in flight per instance), and each file's answers are
written in input order to a spool file on disk, uploaded as ``<input>.out`` only once every record of that file was
answered. So memory stays bounded by a few mini-batches whatever the file sizes, and nothing half-written is ever
presented as done.

A record that fails (the container's error after ``InvocationsMaxRetries``, a record over ``MaxPayloadInMB``, an
answer with the wrong number of records for a join) fails its file: no ``.out`` for it, the other files complete,
and the job ends ``Failed`` with a ``FailureReason`` naming the file and the record. A dead instance takes no more
work; its mini-batch is retried on the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from mlops_lab.aws import Aws
from mlops_lab.errors import ExitCode, LabError
from mlops_lab.sagemaker import transform_records as rules
from mlops_lab.sagemaker.records import AwsError, MotoRecords, primary_container
from mlops_lab.sagemaker.workers import Worker, container_environment, fetch_model_data, started_workers
from mlops_lab.settings import Settings

log = logging.getLogger("mlops_lab.sagemaker.transform")

CHUNK_BYTES = 1024 * 1024
# How SageMaker spells the strategy in the container's SAGEMAKER_BATCH_STRATEGY variable.
BATCH_STRATEGY_VARIABLE = {"MultiRecord": "MULTI_RECORD", "SingleRecord": "SINGLE_RECORD"}


def now() -> datetime:
    return datetime.now(UTC)


class RecordFailed(LabError):
    """One record (or mini-batch) the model container did not answer: it fails its file."""

    exit_code = ExitCode.REFUSED


@dataclass
class Progress:
    files_total: int = 0
    files_done: int = 0
    files_failed: int = 0
    records: int = 0
    instances: int = 0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "FilesTotal": self.files_total,
            "FilesDone": self.files_done,
            "FilesFailed": self.files_failed,
            "RecordsScored": self.records,
            "Instances": self.instances,
            "Note": self.note,
        }


@dataclass
class TransformJob:
    request: dict[str, Any]
    arn: str
    spec: rules.TransformSpec | None = None
    status: str = "InProgress"
    failure_reason: str | None = None
    creation_time: datetime = field(default_factory=now)
    start_time: datetime | None = None
    end_time: datetime | None = None
    progress: Progress = field(default_factory=Progress)
    stop_requested: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return self.request["TransformJobName"]

    def describe(self) -> dict[str, Any]:
        """DescribeTransformJob's answer: the request's fields as AWS echoes them, the state and times (and the lab's
        progress, which the SDK ignores and ``mlops-lab transform`` shows)."""
        request = self.request
        answer = {
            "TransformJobName": self.name,
            "TransformJobArn": self.arn,
            "TransformJobStatus": self.status,
            "ModelName": request["ModelName"],
            "MaxConcurrentTransforms": request.get("MaxConcurrentTransforms", 1),
            "ModelClientConfig": {
                "InvocationsTimeoutInSeconds": 600,
                "InvocationsMaxRetries": 3,
                **(request.get("ModelClientConfig") or {}),
            },
            "MaxPayloadInMB": request.get("MaxPayloadInMB", 6),
            "BatchStrategy": request.get("BatchStrategy", "MultiRecord"),
            "Environment": request.get("Environment") or {},
            "TransformInput": request["TransformInput"],
            "TransformOutput": request["TransformOutput"],
            "TransformResources": request["TransformResources"],
            "CreationTime": self.creation_time,
            "DataProcessing": {"InputFilter": "$", "OutputFilter": "$", "JoinSource": "None"}
            | (request.get("DataProcessing") or {}),
            "LabProgress": self.progress.as_dict(),
        }
        if self.failure_reason:
            answer["FailureReason"] = self.failure_reason
        if self.start_time:
            answer["TransformStartTime"] = self.start_time
        if self.end_time:
            answer["TransformEndTime"] = self.end_time
        for optional in ("DataCaptureConfig", "ExperimentConfig"):
            if request.get(optional):
                answer[optional] = request[optional]
        return answer

    def summary(self) -> dict[str, Any]:
        answer = {
            "TransformJobName": self.name,
            "TransformJobArn": self.arn,
            "CreationTime": self.creation_time,
            "TransformJobStatus": self.status,
        }
        if self.end_time:
            answer["TransformEndTime"] = answer["LastModifiedTime"] = self.end_time
        if self.failure_reason:
            answer["FailureReason"] = self.failure_reason
        return answer


class JobRunner:
    """Runs jobs for one server: S3 through ``aws``, models from moto's ``records``."""

    def __init__(self, settings: Settings, aws: Aws, records: MotoRecords) -> None:
        self.settings, self.aws, self.records = settings, aws, records

    def run(self, job: TransformJob, backend: Any) -> str | None:
        """Run ``job``; the FailureReason, or None when every file has its ``.out``."""
        spec = job.spec or rules.spec_from_request(job.request)
        s3 = self.aws.client("s3")
        try:
            inputs = self._inputs(s3, job.request["TransformInput"]["DataSource"]["S3DataSource"])
        except (ClientError, BotoCoreError, LabError) as error:
            return f"ClientError: cannot list the input: {error}"
        if not inputs:
            uri = job.request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
            return f'ClientError: No S3 objects found under S3 URL "{uri}" given in input data source.'
        job.progress.files_total = len(inputs)
        try:
            container = primary_container(self.records.model(backend, job.request["ModelName"]))
            model_dir = fetch_model_data(self.settings, self.aws, container.get("ModelDataUrl", ""))
        except (LabError, AwsError) as error:
            return f"ClientError: the model cannot be loaded: {error}"
        wanted = int(job.request["TransformResources"]["InstanceCount"])
        cores = os.cpu_count() or 1
        count = min(wanted, cores)
        if count < wanted:
            job.progress.note = f"{wanted} instances asked for, {count} started (this machine has {cores} cores)"
            log.info("transform job %s: %s", job.name, job.progress.note)
        job.progress.instances = count
        environment = container_environment(
            container.get("Environment"),
            {
                "SAGEMAKER_BATCH": "true",
                "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(job.request.get("MaxPayloadInMB", 6)),
                "SAGEMAKER_BATCH_STRATEGY": BATCH_STRATEGY_VARIABLE[spec.batch_strategy],
                "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": str(spec.max_concurrent_transforms),
                **(job.request.get("Environment") or {}),
            },
        )
        logs = self.settings.state_dir / "logs"
        try:
            with started_workers(count, model_dir, environment, logs, job.name) as workers:
                return self._score(job, spec, s3, inputs, workers)
        except LabError as error:
            return f"ClientError: the model container did not start: {error}"

    def _inputs(self, s3: Any, source: dict[str, Any]) -> list[tuple[str, str, str]]:
        """(bucket, key, output key) of every input object, in the order they are listed."""
        kind, uri = source.get("S3DataType", "S3Prefix"), source["S3Uri"]
        bucket, prefix = rules.split_s3_uri(uri)
        if kind == "ManifestFile":
            body = s3.get_object(Bucket=bucket, Key=prefix)["Body"].read()
            return [(*rules.split_s3_uri(entry), relative) for entry, relative in rules.manifest_entries(body)]
        objects = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    objects.append((bucket, item["Key"], rules.relative_key(item["Key"], prefix)))
        return objects

    def _score(
        self, job: TransformJob, spec: rules.TransformSpec, s3: Any, inputs: list[tuple[str, str, str]], workers: list
    ) -> str | None:
        slots: queue.Queue[Worker] = queue.Queue()
        for worker in workers:
            for _ in range(spec.max_concurrent_transforms):
                slots.put(worker)
        size = len(workers) * spec.max_concurrent_transforms
        window: deque[tuple[_File, rules.MiniBatch | None, Future[bytes] | None]] = deque()
        failures: list[str] = []
        out_bucket, out_prefix = rules.split_s3_uri(job.request["TransformOutput"]["S3OutputPath"])
        with ThreadPoolExecutor(size, thread_name_prefix=f"transform-{job.name}") as pool, _Invoker(spec) as invoker:
            for bucket, key, relative in inputs:
                if job.stop_requested.is_set():
                    break
                target = rules.output_key(out_prefix, relative)
                file = _File(f"s3://{bucket}/{key}", out_bucket, target, self.settings.state_dir)
                try:
                    for batch in rules.mini_batches(rules.records(_chunks(s3, bucket, key), spec), spec):
                        if job.stop_requested.is_set() or file.failure:
                            break
                        window.append((file, batch, pool.submit(invoker.send, slots, batch)))
                        while len(window) > 2 * size:
                            self._retire(job, spec, s3, window.popleft(), failures)
                except rules.RecordTooLarge as error:
                    file.fail(f"record {error.index + 1}: {error}")
                except (ClientError, BotoCoreError, OSError, zlib.error, EOFError, LabError) as error:
                    file.fail(f"cannot be read: {error}")
                window.append((file, None, None))
            while window:
                self._retire(job, spec, s3, window.popleft(), failures)
        if failures:
            more = f" (and {len(failures) - 1} more files failed)" if len(failures) > 1 else ""
            return f"ClientError: {failures[0]}{more}"
        return None

    def _retire(self, job: TransformJob, spec: rules.TransformSpec, s3: Any, entry: tuple, failures: list[str]) -> None:
        file, batch, future = entry
        if batch is None:  # the file's end: its .out appears now, whole, or never
            if file.failure or job.stop_requested.is_set():
                file.discard()
                if file.failure:
                    job.progress.files_failed += 1
                    failures.append(f"{file.source}: {file.failure}")
                return
            try:
                file.upload(s3, spec.accept)
            except (ClientError, BotoCoreError, OSError) as error:
                file.fail(f"its output could not be written: {error}")
                job.progress.files_failed += 1
                failures.append(f"{file.source}: {file.failure}")
                return
            job.progress.files_done += 1
            return
        if file.failure or job.stop_requested.is_set():
            future.cancel()
            return
        try:
            answer = future.result()
            file.write(rules.assemble_batch(answer, batch, spec))
            job.progress.records += batch.count
        except (RecordFailed, LabError) as error:
            file.fail(f"record {batch.first + 1}{'' if batch.count == 1 else f'-{batch.first + batch.count}'}: {error}")


def _chunks(s3: Any, bucket: str, key: str) -> Iterator[bytes]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()


class _File:
    """One input object's answers, spooled to disk in input order until the file is done."""

    def __init__(self, source: str, bucket: str, key: str, state_dir: Path) -> None:
        self.source, self.bucket, self.key = source, bucket, key
        spool = state_dir / "sagemaker" / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        self.spool = tempfile.NamedTemporaryFile(dir=spool, prefix="out-", delete=False)  # noqa: SIM115 - kept open
        self.failure: str | None = None

    def write(self, data: bytes) -> None:
        self.spool.write(data)

    def fail(self, reason: str) -> None:
        self.failure = self.failure or reason

    def upload(self, s3: Any, content_type: str) -> None:
        self.spool.close()
        try:
            s3.upload_file(self.spool.name, self.bucket, self.key, ExtraArgs={"ContentType": content_type})
        finally:
            os.unlink(self.spool.name)

    def discard(self) -> None:
        self.spool.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.spool.name)


class _Invoker:
    """Sends a mini-batch to a free instance slot, with the job's timeout and retries (``ModelClientConfig``)."""

    def __init__(self, spec: rules.TransformSpec) -> None:
        self.spec = spec
        self.client = httpx.Client(timeout=spec.invocations_timeout_s)

    def __enter__(self) -> _Invoker:
        return self

    def __exit__(self, *_: Any) -> None:
        self.client.close()

    def send(self, slots: queue.Queue[Worker], batch: rules.MiniBatch) -> bytes:
        headers = {"Content-Type": self.spec.content_type, "Accept": self.spec.accept}
        problem = "no answer"
        for _ in range(self.spec.invocations_max_retries + 1):
            try:
                worker = slots.get(timeout=self.spec.invocations_timeout_s)
            except queue.Empty:
                raise RecordFailed("no model container is left to answer it") from None
            try:
                answer = self.client.post(worker.url + "/invocations", content=batch.payload, headers=headers)
            except httpx.HTTPError as error:
                problem = f"the model container did not answer ({type(error).__name__}: {error})"
                if not worker.alive():
                    problem += f"; it exited with {worker.process.returncode if worker.process else '?'}"
                    continue  # its slot is not given back: a dead instance takes no more work
                slots.put(worker)
                continue
            slots.put(worker)
            if answer.status_code < 400:
                return answer.content
            problem = f"the model container answered {answer.status_code}: {answer.text.strip()[:300]}"
            if answer.status_code < 500:
                break  # the record's fault: asking again gets the same answer
        raise RecordFailed(problem)
