"""Shared fixtures: the course artifacts, a trained model, the Lambda handler module, and one real embedded stack."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from mlops_lab.settings import PROJECT_ROOT, Settings

COURSE_DIR = PROJECT_ROOT.parent / "shared" / "data" / "course"
HANDLER_PATH = PROJECT_ROOT / "lambda" / "batch_predict" / "handler.py"


@pytest.fixture(scope="session")
def course_dir() -> Path:
    if not (COURSE_DIR / "model.onnx").exists():
        pytest.skip("../shared/data/course is not here")
    return COURSE_DIR


@pytest.fixture(scope="session")
def course_model_path(course_dir: Path) -> Path:
    return course_dir / "model.onnx"


@pytest.fixture(scope="session")
def course_batch_path(course_dir: Path) -> Path:
    return course_dir / "input_batch.csv"


@pytest.fixture(scope="session")
def trained_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's own model, trained on generated data (small, so the session stays fast)."""
    from mlops_lab.train import train_and_export

    path = tmp_path_factory.mktemp("model") / "model.onnx"
    train_and_export(None, path, rows=6000, seed=3)
    return path


@pytest.fixture(scope="session")
def sample_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlops_lab.data import generate, write_csv

    path = tmp_path_factory.mktemp("data") / "sample.csv"
    write_csv(generate(500, seed=11, with_label=False), path)
    return path


@dataclass
class LambdaContext:
    """The parts of the Lambda context object a handler may read (Powertools' test idiom)."""

    function_name: str = "batch-predict-test"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:batch-predict-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


@pytest.fixture(scope="session")
def handler_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("batch_predict_handler", HANDLER_PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Lab:
    settings: Settings
    aws: object  # mlops_lab.aws.Aws

    def s3(self):  # type: ignore[no-untyped-def]
        return self.aws.client("s3")  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def lab_stack(tmp_path_factory: pytest.TempPathFactory, trained_model_path: Path) -> Lab:
    """One real MiniStack server for the session, bootstrapped exactly as `mlops-lab up` does, on a free port."""
    from mlops_lab import lab
    from mlops_lab.aws import Aws
    from mlops_lab.bootstrap import publish_model

    settings = Settings(
        state_dir=tmp_path_factory.mktemp("lab"),
        emulator_port=free_port(),
        prefix="lab-test",
        max_input_mb=2,  # small, so the oversized-file case needs only a few MB
    )
    saved = dict(os.environ)
    lab.start_services(settings)
    try:
        aws = Aws()
        lab.run_bootstrap(settings, aws)
        publish_model(settings, aws, trained_model_path.read_bytes())
        yield Lab(settings, aws)
    finally:
        lab.stop_services(settings)
        os.environ.clear()
        os.environ.update(saved)


# == mlflow (issue 4: registry + promotion; owned by tests/test_registry.py and tests/test_sagemaker.py) ==========


@pytest.fixture(scope="session")
def mlflow_lab(lab_stack: Lab) -> Lab:
    """A real mlflow tracking server (sqlite backend, artifacts in the emulator's model bucket) for the session.

    Its settings are the session stack's plus a free mlflow port. Whatever model the session published is put back
    afterwards, so promotions made by these tests do not leak into other modules' expectations.
    """
    from mlops_lab import lab
    from mlops_lab.aws import lab_environment

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    settings = lab_stack.settings.model_copy(update={"mlflow_port": free_port()})
    s3 = lab_stack.s3()
    published = s3.get_object(Bucket=settings.model_bucket, Key=settings.model_key)
    original, original_metadata = published["Body"].read(), published.get("Metadata", {})
    lab.start_mlflow(settings, lab_environment(settings.emulator_url))
    try:
        yield Lab(settings, lab_stack.aws)
    finally:
        from mlops_lab import stack

        stack.stop(settings, "mlflow")
        s3.put_object(Bucket=settings.model_bucket, Key=settings.model_key, Body=original, Metadata=original_metadata)


# == end of the mlflow section ===================================================================================
