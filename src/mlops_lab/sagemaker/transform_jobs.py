"""Batch Transform jobs of the lab's SageMaker: ``Create``/``Describe``/``List``/``StopTransformJob``, as AWS answers
them, and each job's life: ``InProgress`` → ``Completed`` | ``Failed`` | ``Stopping`` → ``Stopped``, never
``Completed`` before its outputs exist. What a running job does is ``transform_runner.py``'s.

A job runs in a thread of the server. ``StopTransformJob`` moves it to ``Stopping``: nothing new is sent, the files
not yet uploaded are dropped, and it ends ``Stopped``. Jobs are kept in the state dir, so ``DescribeTransformJob``
answers after a restart; a job the restart interrupted ends ``Failed`` (or ``Stopped`` when it was stopping), saying
why.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from mlops_lab.aws import Aws
from mlops_lab.sagemaker import transform_records as rules
from mlops_lab.sagemaker.records import AwsError, MotoRecords, validation
from mlops_lab.sagemaker.transform_runner import JobRunner, Progress, TransformJob, now
from mlops_lab.settings import Settings

log = logging.getLogger("mlops_lab.sagemaker.transform")

NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
TERMINAL = ("Completed", "Failed", "Stopped")
STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped")
CHUNK_BYTES = 1024 * 1024
JOBS_FILE = "transform-jobs.json"
INTERRUPTED = "InternalServerError: the lab's SageMaker stopped during the job"


class TransformJobs:
    """The jobs of one server: created, described, listed, stopped; each run in a thread of its own."""

    def __init__(self, settings: Settings, aws: Aws, records: MotoRecords) -> None:
        self.settings = settings
        self.aws = aws
        self.records = records  # server.MotoRecords: the models CreateModel made
        self.folder = settings.state_dir / "sagemaker"
        self._jobs: dict[str, TransformJob] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self.runner = JobRunner(settings, aws, records)
        self._load()

    # -- the API ----------------------------------------------------------------------------------------------------

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("TransformJobName") or ""
        if not NAME_PATTERN.fullmatch(name):
            raise validation(
                f"1 validation error detected: Value '{name}' at 'transformJobName' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
            )
        for required in ("ModelName", "TransformInput", "TransformOutput", "TransformResources"):
            if not request.get(required):
                raise validation(f"1 validation error detected: '{required}' is required.")
        resources = request["TransformResources"]
        if not resources.get("InstanceType") or int(resources.get("InstanceCount") or 0) < 1:
            raise validation("TransformResources needs an InstanceType and an InstanceCount of at least 1.")
        backend = self._model_backend(request["ModelName"])
        try:
            spec = rules.spec_from_request(request)
        except rules.TransformValidationError as error:
            raise validation(str(error)) from error
        arn = f"arn:aws:sagemaker:{self.aws.region}:{backend.account_id}:transform-job/{name.lower()}"
        with self._lock:
            if name in self._jobs:
                raise AwsError(
                    "ResourceInUse",
                    f"Job name must be unique within an AWS account and region, and a job with this name already "
                    f"exists ({self._jobs[name].arn})",
                )
            job = TransformJob(dict(request), arn, spec)
            self._jobs[name] = job
            self._save()
            thread = threading.Thread(target=self._run, args=(job, backend), name=f"transform-{name}", daemon=True)
            self._threads[name] = thread
        thread.start()
        return {"TransformJobArn": arn}

    def describe(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._job(request.get("TransformJobName", "")).describe()

    def list(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            jobs = list(self._jobs.values())
        status, contains = request.get("StatusEquals"), (request.get("NameContains") or "").lower()
        if status and status not in STATUSES:
            raise validation(
                f"Value '{status}' at 'statusEquals' failed to satisfy constraint: one of {list(STATUSES)}"
            )
        bounds = {key: request.get(key) for key in ("CreationTimeAfter", "CreationTimeBefore")}
        jobs = [
            job
            for job in jobs
            if (not status or job.status == status)
            and contains in job.name.lower()
            and (bounds["CreationTimeAfter"] is None or job.creation_time.timestamp() > bounds["CreationTimeAfter"])
            and (bounds["CreationTimeBefore"] is None or job.creation_time.timestamp() < bounds["CreationTimeBefore"])
        ]
        sort_by = request.get("SortBy", "CreationTime")
        key = {"Name": lambda job: job.name, "Status": lambda job: job.status}.get(sort_by, lambda j: j.creation_time)
        jobs.sort(key=key, reverse=request.get("SortOrder", "Descending") == "Descending")
        start = int(request.get("NextToken") or 0)
        size = int(request.get("MaxResults") or 10)
        answer: dict[str, Any] = {"TransformJobSummaries": [job.summary() for job in jobs[start : start + size]]}
        if start + size < len(jobs):
            answer["NextToken"] = str(start + size)
        return answer

    def stop(self, request: dict[str, Any]) -> dict[str, Any]:
        job = self._job(request.get("TransformJobName", ""))
        with self._lock:
            if job.status in TERMINAL:
                raise validation(f"The request was rejected because the transform job is in status {job.status}.")
            if job.status == "InProgress":
                job.status = "Stopping"
                job.stop_requested.set()
                self._save()
        return {}

    def close(self) -> None:
        """End every running job (the server is stopping) and wait a little for them to: one that was running ends
        Failed, saying why (nobody asked it to stop); one that was stopping ends Stopped."""
        with self._lock:
            threads = list(self._threads.values())
            for job in self._jobs.values():
                if job.status == "InProgress":
                    job.failure_reason = INTERRUPTED
                    job.stop_requested.set()
        for thread in threads:
            thread.join(timeout=15)

    def _load(self) -> None:
        for job in _read_jobs(self.folder):
            self._jobs[job.name] = job

    def _save(self) -> None:
        _write_jobs(self.folder, list(self._jobs.values()))

    def _job(self, name: str) -> TransformJob:
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            raise validation(f"Could not find requested job with name {name}")
        return job

    def _model_backend(self, model_name: str) -> Any:
        for backend in self.records.backends():
            if model_name in backend._models:
                return backend
        raise validation(f'Could not find model "{model_name}".')

    # -- running a job ----------------------------------------------------------------------------------------------

    def _run(self, job: TransformJob, backend: Any) -> None:
        job.start_time = now()
        try:
            reason = self.runner.run(job, backend)
        except Exception as error:
            log.exception("transform job %s failed", job.name)
            reason = f"InternalServerError: {type(error).__name__}: {error}"
        with self._lock:
            job.end_time = now()
            if job.stop_requested.is_set():
                job.status = "Failed" if job.failure_reason == INTERRUPTED else "Stopped"
            elif reason:
                job.status, job.failure_reason = "Failed", reason[:1024]
            else:
                job.status = "Completed"
            self._save()
            self._threads.pop(job.name, None)
        log.info("transform job %s: %s %s", job.name, job.status, job.failure_reason or "")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _load_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class _Persisted:
    """How a job is written to and read back from the state dir."""

    @staticmethod
    def dump(job: TransformJob) -> dict[str, Any]:
        return {
            "request": job.request,
            "arn": job.arn,
            "status": job.status,
            "failure_reason": job.failure_reason,
            "creation_time": job.creation_time,
            "start_time": job.start_time,
            "end_time": job.end_time,
            "progress": job.progress.__dict__,
        }

    @staticmethod
    def load(data: dict[str, Any]) -> TransformJob:
        job = TransformJob(data["request"], data["arn"], None, data["status"], data.get("failure_reason"))
        job.creation_time = _load_time(data["creation_time"]) or now()
        job.start_time, job.end_time = _load_time(data.get("start_time")), _load_time(data.get("end_time"))
        job.progress = Progress(**data.get("progress", {}))
        if job.status not in TERMINAL:  # the server stopped while it ran
            job.status = "Stopped" if job.status == "Stopping" else "Failed"
            job.failure_reason = job.failure_reason or INTERRUPTED
            job.end_time = job.end_time or now()
        return job


def _save_path(folder: Path) -> Path:
    return folder / JOBS_FILE


def _write_jobs(folder: Path, jobs: list[TransformJob]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = _save_path(folder)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps([_Persisted.dump(job) for job in jobs], default=_json_default))
    os.replace(temporary, target)


def _read_jobs(folder: Path) -> list[TransformJob]:
    try:
        return [_Persisted.load(item) for item in json.loads(_save_path(folder).read_text())]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as error:
        log.warning("ignoring unreadable transform job records in %s: %s", folder, error)
        return []
