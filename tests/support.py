"""Helpers the tests share: import them from here (``from tests.support import Lab``), never from a conftest.

One of each: the lab factory (``lab_settings``, ``running_lab``), environment isolation (``isolated_environment``),
putting the live model back (``restoring_live_model``), the API launcher (``running_api``); the models are the model
zoo's (tests/model_zoo.py), the lanes tests/lanes.py's. docs/testing.md says which to use when.

conftest.py files hold fixtures and hooks only; pytest imports them itself, and importing one as a module as well
runs it twice under two names.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mlops_lab import ops, stack
from mlops_lab.services import api_service, stop_services
from mlops_lab.settings import PROJECT_ROOT, Settings, as_environment, get_settings

COURSE_DIR = PROJECT_ROOT.parent / "shared" / "data" / "course"
HANDLER_PATH = PROJECT_ROOT / "lambda" / "batch_predict" / "handler.py"

# botocore waiter settings for an output object: up to ~60 s, a cold start plus queueing behind other workers.
WAIT = {"Delay": 0.2, "MaxAttempts": 300}

# What S3 answers for an object that is not there: GetObject says NoSuchKey, HeadObject (no body) a bare 404.
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})

T = TypeVar("T")

# One applicant, as a client sends it to /predict.
RECORD = {
    "age": 39,
    "work_class": "Private",
    "education": "Bachelors",
    "marital_status": "Married",
    "occupation": "Professional",
    "relationship": "Husband",
    "race": "White",
    "sex": "Male",
    "capital_gain": 0,
    "capital_loss": 0,
    "hours_per_week": 40,
    "native_country": "United-States",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Lab:
    """A running stack: its settings and an ``mlops_lab.aws.Aws`` pointed at it."""

    settings: Settings
    aws: Any  # mlops_lab.aws.Aws

    def s3(self) -> Any:
        return self.aws.client("s3")


# -- the environment --------------------------------------------------------------------------------------------------


@contextmanager
def isolated_environment(settings: Settings | None = None, /, **variables: str | None) -> Iterator[None]:
    """This process's environment without the developer's ``LAB_*`` variables, with ``settings`` as the ``LAB_*``
    variables the CLI reads them back from, and with ``variables`` set (None: unset); afterwards exactly as it was
    before, whatever the body changed. The CLI's cached settings are read afresh on entry and on exit.

    The one way a test sets or clears variables (a lab's settings for the CLI, another AWS account), as a ``with``
    block or around a fixture's ``yield``. What it restores is what it found on entry: a fixture using it must not
    outlive one of a narrower scope that was set up after it (session fixtures use it only in tests/conftest.py)."""
    saved = dict(os.environ)
    for name in [name for name in os.environ if name.startswith("LAB_")]:
        del os.environ[name]
    if settings is not None:
        os.environ.update(as_environment(settings))
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    get_settings.cache_clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


# -- the lab factory ------------------------------------------------------------------------------------------------

SERVICE_PORTS = ("emulator_port", "mlflow_port", "api_port", "console_port", "sagemaker_emulator_port")


def lab_settings(state_dir: Path, **overrides: Any) -> Settings:
    """Settings of a lab a test runs for itself: no ``.env``, none of the developer's ``LAB_*`` variables, its state
    under ``state_dir`` and every service on a free loopback port; ``overrides`` on top."""
    ports = {name: free_port() for name in SERVICE_PORTS}
    with isolated_environment():
        return Settings(_env_file=None, state_dir=state_dir, **(ports | overrides))


@contextmanager
def running_lab(settings: Settings, services: Collection[str], *, model: Path | None = None) -> Iterator[Lab]:
    """The lab of ``settings`` brought up by `up`'s own recipe (``ops.bring_up``): ``services`` started, the AWS
    resources bootstrapped, a model live. ``model`` is put in place first, so `up` publishes it instead of training
    one. On exit ``services`` are stopped, whoever (re)started them: a test may stop, kill and restart its own lab."""
    if model is not None:
        settings.model_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model, settings.model_path)
    try:
        yield Lab(settings, ops.bring_up(settings, services=services).aws)
    finally:
        stop_services(settings, services)


@contextmanager
def restoring_live_model(lab: Lab) -> Iterator[None]:
    """The model live on entry (its bytes and its metadata) is live again on exit, whatever the body published,
    promoted or deleted: later tests find the model their expectations are computed from."""
    s3, settings = lab.s3(), lab.settings
    published = s3.get_object(Bucket=settings.model_bucket, Key=settings.model_key)
    body, metadata = published["Body"].read(), published.get("Metadata", {})
    try:
        yield
    finally:
        s3.put_object(Bucket=settings.model_bucket, Key=settings.model_key, Body=body, Metadata=metadata)


# -- the API launcher -----------------------------------------------------------------------------------------------


API_READY_S = 90  # until the API has loaded its model (from S3: an emulator busy with other tests, or AWS)


@dataclass(frozen=True)
class RunningApi:
    """An API process ``running_api`` started."""

    url: str
    pid: int
    log: Path  # its stdout and stderr (the access log's JSON lines among them)


@contextmanager
def running_api(settings: Settings, *, as_image: bool = False) -> Iterator[RunningApi]:
    """The API in a process of its own on ``settings.api_port``, its settings as ``LAB_*`` variables: as `up` starts
    it (``services.api_service``: uvicorn on the app) or, ``as_image``, as the API image's entry point does
    (`python -m mlops_lab.api`). Entered once it is ready (its model loaded); stopped on exit."""
    service = api_service(settings)
    if as_image:
        service = dataclasses.replace(service, command=[sys.executable, "-m", "mlops_lab.api"])
    pid = stack.start(settings, service)
    log = stack.log_path(settings, service.name)
    try:
        wait_until(
            lambda: stack.healthy(f"{service.url}/ready"),
            timeout=API_READY_S,
            interval=0.2,
            message=lambda: f"the API was not ready in {API_READY_S} s:\n{log.read_text()[-3000:]}",
        )
        yield RunningApi(service.url, pid, log)
    finally:
        stack.stop(settings, service)


@dataclass
class LambdaContext:
    """The parts of the Lambda context object a handler may read (Powertools' test idiom)."""

    function_name: str = "batch-predict-test"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:batch-predict-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


# -- waiting --------------------------------------------------------------------------------------------------------


def wait_until(
    check: Callable[[], T], *, timeout: float = 30, interval: float = 0.1, message: str | Callable[[], str] = ""
) -> T:
    """``check()``'s first truthy value, polled every ``interval`` s; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(text or f"not true within {timeout:.0f} s")
        time.sleep(interval)


def wait_for_output(lab: Lab, key: str) -> dict[str, Any]:
    """HEAD of ``s3://<output bucket>/<key>`` once it exists (bounded wait)."""
    s3 = lab.s3()
    s3.get_waiter("object_exists").wait(Bucket=lab.settings.output_bucket, Key=key, WaiterConfig=WAIT)
    return s3.head_object(Bucket=lab.settings.output_bucket, Key=key)


def read_output(lab: Lab, key: str) -> bytes:
    return lab.s3().get_object(Bucket=lab.settings.output_bucket, Key=key)["Body"].read()


# -- what a run measured ---------------------------------------------------------------------------------------------

REPORTED: list[str] = []  # lines shown at the end of the pytest run (conftest's terminal summary)


def report(line: str) -> None:
    REPORTED.append(line)


class ProcessGroupMemory:
    """Samples, while in use, the summed resident memory of a process group (a service and every worker it
    spawned) and keeps the peak."""

    def __init__(self, pgid: int | None, interval: float = 0.2) -> None:
        assert pgid is not None, "the service is not running"
        self.pgid, self.interval = pgid, interval
        self.peak_bytes = self.peak_processes = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._done.is_set():
            total = count = 0
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    if int(fields[2]) == self.pgid:
                        total += int((stat.parent / "statm").read_text().split()[1]) * page
                        count += 1
                except (OSError, IndexError, ValueError):
                    continue
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_processes = total, count
            self._done.wait(self.interval)

    def __enter__(self) -> ProcessGroupMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


# -- errors ---------------------------------------------------------------------------------------------------------


def error_code(error: Exception) -> str:
    """The AWS error code of a botocore ClientError (``"404"``, ``"NoSuchKey"``, ``"AccessDenied"``...)."""
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


# -- CSV --------------------------------------------------------------------------------------------------------------


def csv_text(rows: list[list[str]], header: list[str]) -> str:
    sink = io.StringIO()
    writer = csv.writer(sink, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return sink.getvalue()


def parse_csv(text: str | bytes | Path) -> list[list[str]]:
    """Rows (header first) of a CSV given as text, bytes or a file."""
    if isinstance(text, Path):
        text = text.read_text(encoding="utf-8")
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))
