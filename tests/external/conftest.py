"""The pipeline suite against whatever endpoint the SDK resolves: `make test-external`.

Nothing here starts an emulator. boto3 resolves the target from the SDK's own configuration (``AWS_PROFILE``,
``AWS_ENDPOINT_URL[_<SERVICE>]``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, credentials), exactly as the CLI does: an
emulator the lab did not start (LocalStack with a token, another MiniStack) or an AWS account. Real AWS only with
``LAB_EXTERNAL_ALLOW_AWS=1``.

Every run works under a prefix of its own (``ext-<8 hex>``, in the header of the run's output), so it never meets a
lab that is already there, and the session fixture tears it all down at the end whatever happened: a failing test, a
bootstrap that stopped half-way. The suite's last test runs that teardown itself (`mlops-lab teardown --yes`) and
checks that nothing of the prefix is left.

Settings come from the usual ``LAB_*`` variables (``LAB_LAMBDA_BUNDLE_LAYER=true`` for an emulator that accepts
layers but does not apply them; ``LAB_LAYER_PYTHON``/``LAB_LAYER_PLATFORM`` for the interpreter the target's Lambda
runs, default AWS's python3.12 x86_64), except the prefix, the state dir and the local ports, which are the run's own.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from mlops_lab.aws import Aws
from mlops_lab.bootstrap import build_lambda_layer
from mlops_lab.settings import Settings
from tests.external.support import (
    PREFIX,
    REFUSED_EXIT_CODE,
    ROWS,
    External,
    aws_refusal,
    leftovers,
    teardown_by_cli,
)
from tests.model_zoo import users_iris_classifier
from tests.support import COURSE_DIR, free_port

_OUTCOME: list[str] = []  # what the session's teardown found, for the run's summary


# -- hooks -----------------------------------------------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> list[str]:
    aws = Aws()
    return [
        f"external target: {aws.describe()} (whatever the SDK resolves; this suite starts nothing)",
        f"external prefix: {PREFIX} (every resource of this run; deleted at the end)",
    ]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _OUTCOME:
        terminalreporter.section("external teardown")
        for line in _OUTCOME:
            terminalreporter.write_line(line)


# -- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _environment_of_the_session() -> Iterator[None]:
    """The parent conftest runs the lab's own tests without the developer's LAB_* variables and with an empty AWS
    config file; this suite runs on the user's settings and SDK configuration (their profiles included), so it
    overrides that fixture with one that does nothing."""
    yield


def _settings(state_dir: Path) -> Settings:
    # The user's LAB_* variables and .env apply (bundling, the layer's target, tags...); the prefix, the state and the
    # local ports are this run's, so a lab (and its mlflow or moto) running on this machine is never touched.
    return Settings(
        prefix=PREFIX,
        state_dir=state_dir,
        api_port=free_port(),
        mlflow_port=free_port(),
        sagemaker_emulator_port=free_port(),
    )


def _model(folder: Path) -> tuple[Path, Path, list[str] | None]:
    """(model.onnx, a CSV of its columns, its feature names when the model does not carry them): the course's model
    and ROWS of its batch when ../shared/data/course is here, else a classifier trained on scikit-learn's iris."""
    if (COURSE_DIR / "model.onnx").exists() and (COURSE_DIR / "input_batch.csv").exists():
        batch = folder / "course-batch.csv"
        with (COURSE_DIR / "input_batch.csv").open(newline="", encoding="utf-8") as source:
            lines = [line for _, line in zip(range(ROWS + 1), source, strict=False)]
        batch.write_text("".join(lines), encoding="utf-8")
        return COURSE_DIR / "model.onnx", batch, None
    model_path, rows_path = users_iris_classifier(folder)
    with rows_path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    return model_path, rows_path, header


@pytest.fixture(scope="session")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[External]:
    """Bootstrap the lab under this run's prefix on the SDK's target and publish a model; tear it all down at the end,
    whatever happened (a test failed, bootstrap stopped half-way)."""
    from mlops_lab import model_import
    from mlops_lab.bootstrap import bootstrap

    aws = Aws()
    refusal = aws_refusal(aws)
    if refusal:
        pytest.exit(refusal, returncode=REFUSED_EXIT_CODE)
    settings = _settings(tmp_path_factory.mktemp("external-state"))
    model_path, batch, features = _model(tmp_path_factory.mktemp("external-model"))
    lab = External(settings, aws, model_name="", batch=batch)
    try:
        bootstrap(settings, aws, build_lambda_layer(settings, aws))
        imported = model_import.import_model(
            settings, aws, str(model_path), features=features, sample=batch, mlflow=False
        )
        lab.model_name = imported.name
        yield lab
    finally:
        if lab.torn_down:
            _OUTCOME.append(f"{PREFIX}: torn down by the suite's last test; nothing left")
        else:
            _tear_down(settings)


def _tear_down(settings: Settings) -> None:
    """`mlops-lab teardown --yes`, then a look of our own: an error (the run fails) unless both find nothing left."""
    result = teardown_by_cli(settings)
    try:
        left = leftovers(Aws().client, PREFIX)
    except (BotoCoreError, ClientError) as error:
        left = [f"(could not look: {error})"]
    if result.exit_code == 0 and not left:
        _OUTCOME.append(f"{PREFIX}: torn down by the session's finalizer (the suite's last test did not)")
        return
    problem = (
        f"{PREFIX}: TEARDOWN INCOMPLETE: `mlops-lab teardown --yes` exited {result.exit_code}; "
        f"still there: {', '.join(left) or 'nothing found'}"
    )
    _OUTCOME.append(f"{problem}\n{result.output}")
    raise AssertionError(f"{problem}\n{result.output}")
