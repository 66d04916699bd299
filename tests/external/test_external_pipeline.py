"""The lab's pipeline on the SDK's target (see conftest.py): bootstrap -> upload -> predictions and error reports ->
the API serving the published model from S3 -> teardown to zero. The last test tears down; keep it last."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError, WaiterError

from mlops_lab.aws import Aws, is_not_found
from mlops_lab.contract import META_MODEL_NAME, META_ROWS, error_key, prediction_key
from mlops_lab.inference import TabularModel, output_columns
from tests.external.support import OUTPUT_WAIT, PREFIX, External, leftovers, teardown_by_cli
from tests.support import free_port, parse_csv, running_api


def wait_for(lab: External, key: str, *, input_key: str, expect: str) -> dict[str, Any]:
    """HEAD of the output ``key`` once the function wrote it (botocore's ``object_exists`` waiter); on a timeout, say
    what the function wrote instead, if anything."""
    bucket = lab.settings.output_bucket
    try:
        lab.s3.get_waiter("object_exists").wait(Bucket=bucket, Key=key, WaiterConfig=OUTPUT_WAIT)
    except WaiterError:
        other = error_key(input_key) if key == prediction_key(input_key) else prediction_key(input_key)
        found = _read(lab, bucket, other)
        raise AssertionError(
            f"no {expect} s3://{bucket}/{key} for s3://{lab.settings.input_bucket}/{input_key} after "
            f"{OUTPUT_WAIT['Delay'] * OUTPUT_WAIT['MaxAttempts']:.0f} s; s3://{bucket}/{other}: "
            f"{found[:2000]!r}" + ("" if found else f" (the function's log: /aws/lambda/{lab.settings.function_name})")
        ) from None
    return lab.s3.head_object(Bucket=bucket, Key=key)


def _read(lab: External, bucket: str, key: str) -> bytes:
    try:
        return lab.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if is_not_found(error):
            return b""
        raise


def published_model(lab: External) -> TabularModel:
    body = lab.s3.get_object(Bucket=lab.settings.model_bucket, Key=lab.settings.model_key)["Body"].read()
    return TabularModel(body)


@dataclass(frozen=True)
class Scored:
    key: str
    head: dict[str, Any]
    rows: list[list[str]]  # the predictions object, header first


@pytest.fixture(scope="session")
def scored(external: External) -> Scored:
    """The suite's batch uploaded to the input bucket, and what the function wrote for it."""
    key = "external/batch.csv"
    external.s3.upload_file(
        str(external.batch), external.settings.input_bucket, key, ExtraArgs={"ContentType": "text/csv"}
    )
    head = wait_for(external, prediction_key(key), input_key=key, expect="predictions")
    body = _read(external, external.settings.output_bucket, prediction_key(key))
    return Scored(key, head, parse_csv(body))


def test_bootstrap_made_the_pipeline_under_the_prefix(external: External) -> None:
    settings, aws = external.settings, external.aws
    function = aws.client("lambda").get_function(FunctionName=settings.function_name)["Configuration"]
    assert function["FunctionName"].startswith(f"{PREFIX}-")
    assert f":role/{settings.role_name}" in function["Role"]
    layers = [layer["Arn"] for layer in function.get("Layers") or []]
    if settings.lambda_bundle_layer:  # the layer's files are in the function's own code
        assert not layers, layers
        assert function["CodeSize"] > 10_000_000, function["CodeSize"]
    else:
        assert len(layers) == 1 and f":layer:{settings.layer_name}:" in layers[0], layers
    s3 = external.s3
    for bucket in settings.buckets:
        s3.head_bucket(Bucket=bucket)
    notification = s3.get_bucket_notification_configuration(Bucket=settings.input_bucket)
    assert [c["LambdaFunctionArn"] for c in notification["LambdaFunctionConfigurations"]] == [function["FunctionArn"]]
    head = s3.head_object(Bucket=settings.model_bucket, Key=settings.model_key)
    assert head["Metadata"][META_MODEL_NAME] == external.model_name


def test_upload_gets_predictions(external: External, scored: Scored) -> None:
    """Every row comes back, as it went in, with the model's prediction columns after it."""
    batch = parse_csv(external.batch)
    header, rows = scored.rows[0], scored.rows[1:]
    added = output_columns(published_model(external))
    assert header == [*batch[0], *added]
    assert len(rows) == len(batch) - 1  # ROWS of the course's batch, or iris's 40
    assert [row[: len(batch[0])] for row in rows] == batch[1:]
    assert all(len(row) == len(header) for row in rows)
    assert scored.head["Metadata"][META_ROWS] == str(len(rows))
    assert scored.head["Metadata"][META_MODEL_NAME] == external.model_name


def test_bad_csv_gets_an_error_report(external: External) -> None:
    """A value of the wrong type: an error report under errors/ naming the row and column, no predictions."""
    header, first, second = parse_csv(external.batch)[:3]
    column = header[0]  # a number for either model (the course's age, iris's sepal length)
    sink = io.StringIO()
    csv.writer(sink, lineterminator="\n").writerows([header, first, ["forty", *second[1:]]])
    key = "external/bad.csv"
    external.s3.put_object(Bucket=external.settings.input_bucket, Key=key, Body=sink.getvalue().encode())
    wait_for(external, error_key(key), input_key=key, expect="error report")
    report = json.loads(_read(external, external.settings.output_bucket, error_key(key)))
    assert report["input"] == f"s3://{external.settings.input_bucket}/{key}"
    assert f"column '{column}' expects " in report["reason"], report  # a number, an integer: the model's type
    assert "1 value(s) are not" in report["reason"], report
    assert report["columns"] == [column]
    assert report["rows"] == [{"row": 3, "column": column, "value": "forty"}]
    assert _read(external, external.settings.output_bucket, prediction_key(key)) == b""


@pytest.fixture
def api(external: External, tmp_path: Path) -> Iterator[httpx.Client]:
    """`python -m mlops_lab.api` (the API image's entry point) on a free loopback port, with this run's settings,
    serving the model bucket's model (source s3) through the SDK's own configuration."""
    settings = external.settings.model_copy(
        update={
            "api_port": free_port(),
            "state_dir": tmp_path / "api-state",
            "api_model_source": "s3",
            "api_access_log": False,
        }
    )
    headers = {"X-API-Key": settings.api_key} if settings.api_key else {}
    with (
        running_api(settings, as_image=True) as running,
        httpx.Client(base_url=running.url, timeout=30, headers=headers) as client,
    ):
        yield client


def test_api_serving_from_s3_answers_as_the_batch_did(external: External, scored: Scored, api: httpx.Client) -> None:
    """The API loads the published model from the model bucket and, for the batch's rows, gives the predictions the
    Lambda wrote: /invocations (CSV in, CSV out: the batch output's columns, in order, headerless) to the character,
    /predict (JSON) to the probabilities' precision."""
    assert api.get("/metadata").json()["name"] == external.model_name
    batch_text = external.batch.read_text(encoding="utf-8")
    width = len(parse_csv(batch_text)[0])
    from_batch = [row[width:] for row in scored.rows]  # its header included: prediction, probability_<class>...

    answer = api.post("/invocations", content=batch_text, headers={"Content-Type": "text/csv", "Accept": "text/csv"})
    assert answer.status_code == 200, answer.text
    from_api = parse_csv(answer.text)  # SageMaker's CSV answer: one line per record, no header
    assert len(from_api) == len(from_batch) - 1
    for number, (expected, got) in enumerate(zip(from_batch[1:], from_api, strict=True), start=1):
        assert got[0] == expected[0], f"row {number}: the API says {got[0]!r}, the Lambda wrote {expected[0]!r}"
        assert same_probabilities(got[1:], expected[1:]), f"row {number}: {got[1:]} from the API, {expected[1:]} batch"

    header, *rows = parse_csv(batch_text)
    records = [dict(zip(header, map(_json_value, row), strict=True)) for row in rows[:20]]
    answer = api.post("/predict", json=records)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    for expected, got in zip(from_batch[1:21], predictions, strict=True):
        assert got["label"] == expected[0]
        probabilities = [got["probabilities"][column.removeprefix("probability_")] for column in from_batch[0][1:]]
        assert same_probabilities(probabilities, expected[1:])


def same_probabilities(got: list[str] | list[float], expected: list[str]) -> bool:
    """Equal as the batch output writes them (6 decimals): float32 scoring on another interpreter, another batch size
    or thread count can land a value on the other side of a rounding boundary, one unit in the last place away."""
    return [float(p) for p in got] == pytest.approx([float(p) for p in expected], abs=2e-6)


def _json_value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def test_teardown_leaves_nothing(external: External) -> None:
    """`mlops-lab teardown --yes` deletes everything and checks, service by service (exit 0: nothing left); and a
    look of our own, through a fresh SDK session, finds nothing named with the run's prefix."""
    result = teardown_by_cli(external.settings)
    assert result.exit_code == 0, result.output
    left = leftovers(Aws().client, PREFIX)
    assert not left, f"still there after teardown: {left}"
    external.torn_down = True  # else the session's finalizer tries again, and says what it found
