"""The model containers of the lab's SageMaker: a SageMaker model's data, unpacked, served by the lab's own serving code.

On AWS an endpoint variant or a transform instance is a container started with ``serve`` and the model data unpacked
in ``/opt/ml/model``. Here a container is a worker process: ``python -m mlops_lab.api serve --model-source <dir>``
(the API the lab's image runs, on the same inference core as the Lambda), on a free loopback port, with the
container environment SageMaker gives it (``SAGEMAKER_BATCH``... and the model's ``Environment``). The lab serves
every model with that code, whatever image the model names: the model data must hold a model it can serve (one ONNX
file, as the lab's registered models and mlflow's ``model.tar.gz`` of them do).

A worker's environment is built from scratch, not inherited: the lab's API key or SDK variables of the person's
shell have no business in a model container.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from mlops_lab.aws import Aws
from mlops_lab.errors import ExitCode, LabError
from mlops_lab.sagemaker.transform_records import TransformValidationError, split_s3_uri
from mlops_lab.settings import Settings

START_TIMEOUT_S = 60.0
_KEEP_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")
MODEL_DATA_FOLDER = "sagemaker-models"


class ModelDataError(LabError):
    """A SageMaker model whose data cannot be fetched or unpacked (AWS: the container fails to start)."""

    exit_code = ExitCode.REFUSED


class WorkerFailed(LabError):
    """A worker process that did not start or died (AWS: the instance's container failed)."""

    exit_code = ExitCode.UNHEALTHY


def model_data_root(settings: Settings) -> Path:
    return settings.state_dir / "sagemaker" / MODEL_DATA_FOLDER


def fetch_model_data(settings: Settings, aws: Aws, model_data_url: str) -> Path:
    """``ModelDataUrl`` unpacked in a folder of its own (one per object version: its ETag), reused while it exists.

    A ``.tar.gz`` is unpacked as SageMaker does (members outside the folder refused: tarfile's ``data`` filter); any
    other object (a bare ``model.onnx``) is copied in as it is. The folder appears whole or not at all."""
    try:
        bucket, key = split_s3_uri(model_data_url, "ModelDataUrl")
    except TransformValidationError as error:
        raise ModelDataError(f"not an S3 object URI: {model_data_url!r}") from error
    if not key:
        raise ModelDataError(f"not an S3 object URI: {model_data_url!r}")
    s3 = aws.client("s3")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except Exception as error:
        raise ModelDataError(f"cannot read the model data {model_data_url}: {error}") from error
    digest = hashlib.sha256(f"{model_data_url}\n{head.get('ETag', '')}".encode()).hexdigest()[:20]
    folder = model_data_root(settings) / digest
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=folder.parent))
    try:
        download = staging / "model-data"
        s3.download_file(bucket, key, str(download))
        unpacked = staging / "model"
        unpacked.mkdir()
        if tarfile.is_tarfile(download):
            with tarfile.open(download) as archive:
                archive.extractall(unpacked, filter="data")
        else:
            shutil.copyfile(download, unpacked / Path(key).name)
        try:
            os.rename(unpacked, folder)
        except OSError:
            if not folder.is_dir():  # someone else unpacked the same object first: theirs is as good
                raise
    except (OSError, tarfile.TarError) as error:
        raise ModelDataError(f"cannot unpack the model data {model_data_url}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def container_environment(
    model_environment: Mapping[str, str] | None = None, batch: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A model container's environment: the basics of this process's (PATH...), CreateModel's ``Environment``,
    and for a transform job SageMaker's batch variables and the job's own ``Environment``."""
    environment = {name: os.environ[name] for name in _KEEP_ENVIRONMENT if name in os.environ}
    environment.update(model_environment or {})
    environment.update(batch or {})
    environment.update({"PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "LAB_API_MODEL_POLL_S": "3600"})
    return environment


@dataclass
class Worker:
    """One model container: a process serving ``model_dir`` on ``url``."""

    model_dir: Path
    environment: dict[str, str]
    log_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, *, timeout: float = START_TIMEOUT_S) -> Worker:
        self.port = self.port or free_port(self.host)
        command = [
            sys.executable,
            "-m",
            "mlops_lab.api",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--model-source",
            str(self.model_dir),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env=self.environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise WorkerFailed(
                        f"the model container for {self.model_dir.name} exited with {self.process.returncode} while "
                        f"starting: {self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + "/ping").status_code == 200:
                        return self
                time.sleep(0.1)
        self.stop()
        raise WorkerFailed(
            f"the model container for {self.model_dir.name} did not answer /ping in {timeout:.0f} s: {self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, timeout: float = 10) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"


class EndpointWorkers:
    """The running containers of endpoints: one per model folder and environment, started on first use and kept
    until the server stops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._workers: dict[tuple[Path, tuple[tuple[str, str], ...]], Worker] = {}
        self._lock = threading.Lock()

    def get(self, model_dir: Path, model_environment: Mapping[str, str] | None = None) -> Worker:
        key = (model_dir, tuple(sorted((model_environment or {}).items())))
        with self._lock:
            worker = self._workers.get(key)
            if worker is not None and worker.alive():
                return worker
            worker = Worker(
                model_dir,
                container_environment(model_environment),
                log_path=self.settings.state_dir / "logs" / f"sagemaker-endpoint-{model_dir.name}.log",
            ).start()
            self._workers[key] = worker
            return worker

    def stop_all(self) -> None:
        with self._lock:
            for worker in self._workers.values():
                worker.stop()
            self._workers.clear()


@contextlib.contextmanager
def started_workers(
    count: int, model_dir: Path, environment: dict[str, str], log_folder: Path, name: str
) -> Iterator[list[Worker]]:
    """``count`` containers of one model, started together and stopped on leaving, whatever happened."""
    workers = [
        Worker(model_dir, dict(environment), log_path=log_folder / f"sagemaker-transform-{name}-{n}.log")
        for n in range(count)
    ]
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()
