"""The compose stack end to end, as a user on the host reaches it: published 127.0.0.1 ports only.

Upload a CSV -> the Lambda (layer built for the emulator's Python) writes predictions; the API serves the same model;
mlflow holds the run and the registered, promoted version; bad input gets an error report.
Phase "restarted" (after `down` without -v and `up` again) checks that the volumes kept the data.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from tests.support import NOT_FOUND_CODES, error_code, wait_until

PHASE = os.environ.get("COMPOSE_PHASE", "first")
PERSIST_KEY = "compose-ci/persist.csv"
MODEL_KEY = "models/income-classifier/model.onnx"
MODEL_NAME = "income-classifier"
LABELS = {"<=50K", ">50K"}


def wait_for_object(s3: Any, bucket: str, keys: list[str], timeout: float = 120) -> tuple[str, bytes]:
    """(key, body) of the first of ``keys`` to appear in ``bucket`` (bounded wait)."""

    def first() -> tuple[str, bytes] | None:
        for key in keys:
            try:
                return key, s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as error:
                if error_code(error) not in NOT_FOUND_CODES:
                    raise
        return None

    return wait_until(
        first,
        timeout=timeout,
        interval=0.25,
        message=f"none of {keys} appeared in s3://{bucket} within {timeout:.0f} s",
    )


def wait_http(url: str, timeout: float = 60) -> httpx.Response:
    """The first 200 answer of ``url`` (bounded wait)."""

    def answer() -> httpx.Response | None:
        try:
            response = httpx.get(url, timeout=5)
        except httpx.HTTPError:
            return None
        return response if response.status_code == 200 else None

    return wait_until(answer, timeout=timeout, interval=0.5, message=f"{url} did not answer 200 within {timeout:.0f} s")


def model_versions(mlflow_url: str) -> list[dict[str, Any]]:
    """Every registered version of the model (registered-models/search's latest_versions has one per stage only)."""
    response = httpx.get(
        f"{mlflow_url}/api/2.0/mlflow/model-versions/search",
        params={"filter": f"name='{MODEL_NAME}'"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json().get("model_versions", [])


@pytest.fixture(scope="module")
def sample_rows():
    from mlops_lab.synthetic import generate

    return generate(300, seed=5, with_label=False)


@pytest.fixture(scope="module")
def sample_csv_bytes(sample_rows) -> bytes:
    return sample_rows.to_csv(index=False).encode()


def test_services_healthy(stack_url, api_url, mlflow_url):
    assert httpx.get(f"{stack_url}/_ministack/health", timeout=5).status_code == 200
    assert httpx.get(f"{api_url}/health", timeout=5).json() == {"status": "ok"}
    assert httpx.get(f"{mlflow_url}/health", timeout=5).status_code == 200


def test_bootstrap_wired_the_pipeline(aws, buckets):
    lam, s3 = aws("lambda"), aws("s3")
    function = lam.get_function(FunctionName=f"{buckets['input'].rsplit('-', 1)[0]}-batch-predict")["Configuration"]
    assert function["State"] == "Active"
    prefix = buckets["input"].rsplit("-", 1)[0]
    layers = [layer["Arn"] for layer in function.get("Layers", [])]
    assert len(layers) == 1 and f":layer:{prefix}-onnxruntime:" in layers[0], layers
    rules = s3.get_bucket_notification_configuration(Bucket=buckets["input"])["LambdaFunctionConfigurations"]
    assert [rule["LambdaFunctionArn"] for rule in rules] == [function["FunctionArn"]]
    head = s3.head_object(Bucket=buckets["model"], Key=MODEL_KEY)  # raises (404) when no model is published
    assert head["ContentLength"] > 0
    # Failed events go to the failure queue (`mlops-lab failures`), after the retries the settings ask for.
    sqs = aws("sqs")
    queue = sqs.get_queue_url(QueueName=f"{prefix}-batch-predict-failures")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    invoke = lam.get_function_event_invoke_config(FunctionName=function["FunctionName"])
    assert invoke["DestinationConfig"]["OnFailure"]["Destination"] == queue_arn
    assert invoke["MaximumRetryAttempts"] == 2


def test_upload_gets_predictions(aws, buckets, unique_key, sample_csv_bytes, sample_rows):
    s3 = aws("s3")
    s3.put_object(Bucket=buckets["input"], Key=unique_key, Body=sample_csv_bytes, ContentType="text/csv")
    found, body = wait_for_object(s3, buckets["output"], [f"predictions/{unique_key}", f"errors/{unique_key}.json"])
    assert found == f"predictions/{unique_key}", body[:2000]
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == len(sample_rows)
    assert list(rows[0])[-3:] == ["prediction", "probability_<=50K", "probability_>50K"]
    for row in rows:
        probabilities = {label: float(row[f"probability_{label}"]) for label in LABELS}
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-4), row
        assert probabilities[row["prediction"]] >= 0.5 - 1e-6, row  # the predicted class is the likelier one


def test_bad_input_gets_error_report(aws, buckets, unique_key):
    s3 = aws("s3")
    s3.put_object(Bucket=buckets["input"], Key=unique_key, Body=b"age,not_a_column\n40,x\n", ContentType="text/csv")
    found, body = wait_for_object(s3, buckets["output"], [f"errors/{unique_key}.json", f"predictions/{unique_key}"])
    assert found == f"errors/{unique_key}.json"
    report = json.loads(body)
    assert report["input"] == f"s3://{buckets['input']}/{unique_key}"
    # The report names the column that is not a feature (and not the one that is), and says what is missing.
    assert "not_a_column" in report["columns"] and "age" not in report["columns"], report
    assert "missing columns" in report["reason"] and "unexpected columns: not_a_column" in report["reason"], report


@pytest.mark.skipif(not shutil.which("aws"), reason="the AWS CLI is not installed on this host")
def test_aws_cli_round_trip(stack_url, buckets, unique_key, sample_csv_bytes, tmp_path):
    """The README's user story, literally: `aws --endpoint-url http://127.0.0.1:4566 s3 cp ...`."""
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.pop("AWS_PROFILE", None)
    source = tmp_path / "mine.csv"
    source.write_bytes(sample_csv_bytes)
    aws_cli = ["aws", "--endpoint-url", stack_url, "s3"]
    subprocess.run(
        [*aws_cli, "cp", str(source), f"s3://{buckets['input']}/{unique_key}"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=stack_url, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    wait_for_object(s3, buckets["output"], [f"predictions/{unique_key}"])
    out = subprocess.run(
        [*aws_cli, "cp", f"s3://{buckets['output']}/predictions/{unique_key}", "-"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    lines = out.stdout.decode().splitlines()
    assert lines[0].split(",")[-3:] == ["prediction", "probability_<=50K", "probability_>50K"]
    assert len(lines) == len(sample_csv_bytes.decode().splitlines())  # header + one line per input row


def test_api_predicts_with_the_published_model(api_url, aws, buckets, sample_rows):
    ready = wait_http(f"{api_url}/ready").json()
    records = json.loads(sample_rows.head(5).to_json(orient="records"))
    response = httpx.post(f"{api_url}/predict", json=records, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 5
    for row in body["predictions"]:
        assert set(row["probabilities"]) == LABELS, row
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert row["probabilities"][row["label"]] >= 0.5 - 1e-6, row
    # The API serves what the model bucket publishes: the version promote stamped (mlflow is always wired here).
    head = aws("s3").head_object(Bucket=buckets["model"], Key=MODEL_KEY)
    published = head.get("Metadata", {}).get("model-version")
    assert published, f"the published model carries no model-version: {head.get('Metadata')}"
    assert ready["model"]["version"] == published
    assert body["model"]["version"] == published
    # SageMaker's contract on the same container.
    assert httpx.get(f"{api_url}/ping", timeout=5).status_code == 200


def test_mlflow_has_the_run_and_the_champion(mlflow_url, aws, buckets):
    api = f"{mlflow_url}/api/2.0/mlflow"
    models = httpx.get(f"{api}/registered-models/search", timeout=10).json().get("registered_models", [])
    names = {model["name"] for model in models}
    assert MODEL_NAME in names, f"no registered model in mlflow: {names}"
    champion = httpx.get(f"{api}/registered-models/alias", params={"name": MODEL_NAME, "alias": "champion"}, timeout=10)
    assert champion.status_code == 200, champion.text
    version = champion.json()["model_version"]
    run = httpx.get(f"{api}/runs/get", params={"run_id": version["run_id"]}, timeout=10).json()["run"]
    metrics = {metric["key"]: metric["value"] for metric in run["data"]["metrics"]}
    assert metrics["roc_auc"] > 0.7
    # The champion is what the model bucket serves, and its artifacts live in the emulator's S3.
    head = aws("s3").head_object(Bucket=buckets["model"], Key=MODEL_KEY)
    assert head["Metadata"].get("model-version") == version["version"]
    artifacts = aws("s3").list_objects_v2(Bucket=buckets["model"], Prefix="mlflow/")
    assert artifacts.get("KeyCount", 0) > 0, "no mlflow artifacts in the emulator's S3"


@pytest.mark.skipif(PHASE != "first", reason="writes the object the restarted phase looks for")
def test_leave_an_object_for_the_restart(aws, buckets, sample_csv_bytes):
    s3 = aws("s3")
    s3.put_object(Bucket=buckets["input"], Key=PERSIST_KEY, Body=sample_csv_bytes, ContentType="text/csv")
    wait_for_object(s3, buckets["output"], [f"predictions/{PERSIST_KEY}"])


@pytest.mark.skipif(PHASE != "restarted", reason="only after `down` (no -v) and `up` again")
def test_down_and_up_keep_the_data(aws, buckets, mlflow_url):
    s3 = aws("s3")
    s3.head_object(Bucket=buckets["input"], Key=PERSIST_KEY)
    s3.head_object(Bucket=buckets["output"], Key=f"predictions/{PERSIST_KEY}")
    versions = model_versions(mlflow_url)
    assert len(versions) == 1, f"expected the one version registered before the restart: {versions}"


@pytest.mark.skipif(not os.environ.get("COMPOSE_ECR_TAG"), reason="the CI script pushes the api image first")
def test_api_image_in_the_emulators_ecr(aws):
    repository, tag = os.environ["COMPOSE_ECR_REPOSITORY"], os.environ["COMPOSE_ECR_TAG"]
    images = aws("ecr").describe_images(repositoryName=repository)["imageDetails"]
    assert any(tag in image.get("imageTags", []) for image in images), images
    if os.environ.get("COMPOSE_ECR_DIGEST"):  # what the push answered and the script pulled back
        assert os.environ["COMPOSE_ECR_DIGEST"] in {image["imageDigest"] for image in images}, images
