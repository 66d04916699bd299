"""The lab's pipeline on the SDK's target (see conftest.py): bootstrap -> upload -> predictions and error reports ->
the API serving the published model from S3 -> teardown to zero. The last test tears down; keep it last."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from mlops_lab.aws import Aws, is_not_found
from mlops_lab.contract import META_MODEL_NAME, META_ROWS, error_key, prediction_key
from mlops_lab.inference import TabularModel, output_columns
from tests.external.support import OUTPUT_WAIT, PREFIX, External, leftovers, teardown_by_cli
from tests.support import free_port, parse_csv, running_api

SAGEMAKER_IMAGE = "LAB_EXTERNAL_SAGEMAKER_IMAGE"  # on AWS: an image in ECR that serves the model (`image push`)


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


def test_a_tiny_transform_job_where_the_target_has_sagemaker(external: External, scored: Scored) -> None:
    """Where the SDK's ``sagemaker`` client reaches a SageMaker (the lab's, through the `mlops-lab` profile; AWS's,
    with an image that serves the model in ``LAB_EXTERNAL_SAGEMAKER_IMAGE``), the published model scores 20 of the
    batch's rows in a Batch Transform job: one answer line per record, the labels the Lambda wrote. Else skipped."""
    from mlops_lab import sagemaker

    settings, aws = external.settings, external.aws
    sm = aws.client("sagemaker")
    try:
        sm.list_transform_jobs(MaxResults=1)
    except (ClientError, BotoCoreError) as error:
        pytest.skip(f"the target has no SageMaker ({type(error).__name__}: {error})")
    image = os.environ.get(SAGEMAKER_IMAGE)
    if aws.on_aws and not image:
        pytest.skip(
            f"on AWS the job needs an image that serves the model: set {SAGEMAKER_IMAGE} (`mlops-lab image push`)"
        )
    role, _ = sagemaker.ensure_role(settings, aws)  # the lab's SageMaker role: teardown removes it with the rest
    model_object = s3_tarball(external, "external/transform/model.tar.gz")
    rows = external.batch.read_text(encoding="utf-8").splitlines()[1:21]
    external.s3.put_object(Bucket=settings.model_bucket, Key="external/transform/in/rows.csv", Body="\n".join(rows))
    name = f"{settings.prefix}-transform"
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=role,
        PrimaryContainer={"Image": image or "the-labs-serving-code", "ModelDataUrl": model_object},
        Tags=[{"Key": key, "Value": value} for key, value in settings.resource_tags.items()],
    )
    try:
        sm.create_transform_job(
            TransformJobName=name,
            ModelName=name,
            TransformInput={
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{settings.model_bucket}/external/transform/in/",
                    }
                },
                "ContentType": "text/csv",
                "SplitType": "Line",
            },
            TransformOutput={
                "S3OutputPath": f"s3://{settings.model_bucket}/external/transform/out",
                "Accept": "text/csv",
                "AssembleWith": "Line",
            },
            TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
        )
        with contextlib.suppress(WaiterError):  # it raises on Failed: the assertion below says why instead
            sm.get_waiter("transform_job_completed_or_stopped").wait(
                TransformJobName=name, WaiterConfig={"Delay": 5, "MaxAttempts": 180}
            )
        job = sm.describe_transform_job(TransformJobName=name)
        assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
        out = external.s3.get_object(Bucket=settings.model_bucket, Key="external/transform/out/rows.csv.out")
        labels = [line.split(",")[0] for line in out["Body"].read().decode().splitlines()]
        width = len(parse_csv(rows[0])[0])
        assert labels == [row[width] for row in scored.rows[1:21]]
    finally:
        sm.delete_model(ModelName=name)


def s3_tarball(external: External, key: str) -> str:
    """The published model object as a SageMaker model.tar.gz in the model bucket; its URI."""
    import tarfile

    settings = external.settings
    body = external.s3.get_object(Bucket=settings.model_bucket, Key=settings.model_key)["Body"].read()
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w:gz") as archive:
        member = tarfile.TarInfo("model.onnx")
        member.size = len(body)
        archive.addfile(member, io.BytesIO(body))
    external.s3.put_object(Bucket=settings.model_bucket, Key=key, Body=sink.getvalue())
    return f"s3://{settings.model_bucket}/{key}"


def test_teardown_leaves_nothing(external: External) -> None:
    """`mlops-lab teardown --yes` deletes everything and checks, service by service (exit 0: nothing left); and a
    look of our own, through a fresh SDK session, finds nothing named with the run's prefix."""
    result = teardown_by_cli(external.settings)
    assert result.exit_code == 0, result.output
    left = leftovers(Aws().client, PREFIX)
    assert not left, f"still there after teardown: {left}"
    external.torn_down = True  # else the session's finalizer tries again, and says what it found
