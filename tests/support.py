"""Helpers the tests share: import them from here (``from tests.support import Lab``), never from a conftest.

conftest.py files hold fixtures and hooks only; pytest imports them itself, and importing one as a module as well
runs it twice under two names.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mlops_lab.settings import PROJECT_ROOT, Settings

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


# -- models of other kinds (scikit-learn's bundled data sets, exported with skl2onnx) ---------------------------------


def diabetes_regressor(folder: Path) -> tuple[Path, Path]:
    """A regressor with one [N, 10] float input and no metadata (so no feature names), and a CSV of its rows with
    named columns: (model.onnx, rows.csv)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import RandomForestRegressor

    data = load_diabetes(as_frame=True)
    regressor = RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0).fit(
        data.data.to_numpy(), data.target
    )
    model = convert_sklearn(regressor, initial_types=[("input", FloatTensorType([None, 10]))], target_opset=18)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diabetes.onnx").write_bytes(model.SerializeToString())
    data.data.head(60).to_csv(folder / "diabetes.csv", index=False)
    return folder / "diabetes.onnx", folder / "diabetes.csv"


def iris_classifier(folder: Path) -> tuple[Path, Path]:
    """A 3-class classifier with integer labels, one [N, 4] float input, ZipMap probabilities and no metadata, and
    a CSV of rows with named columns: (model.onnx, rows.csv)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris(as_frame=True)
    classifier = LogisticRegression(max_iter=500).fit(data.data.to_numpy(), data.target)
    model = convert_sklearn(classifier, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=18)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "iris.onnx").write_bytes(model.SerializeToString())
    frame = data.data.rename(columns=lambda name: name.replace(" (cm)", "").replace(" ", "_"))
    frame.sample(40, random_state=1).to_csv(folder / "iris.csv", index=False)
    return folder / "iris.onnx", folder / "iris.csv"
