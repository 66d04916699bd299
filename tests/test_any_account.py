"""The whole pipeline in another region and another account, with IAM enforced, as a user's own account would be:
eu-west-1, account 210987654321 (MiniStack makes a 12-digit access key root of that account).

Bootstrap, upload -> predictions, the API serving from S3, the registry (mlflow writing its artifacts into that
account's bucket) and teardown, on the session's emulator but in an account of their own, so nothing here touches the
default account's resources, and nothing of that account's is visible from there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

from mlops_lab import jobs, model, registry, services, training
from mlops_lab.aws import Aws
from mlops_lab.teardown import tagged_arns, teardown
from tests.support import RECORD, Lab, error_code, free_port, isolated_environment, running_lab

ACCOUNT = "210987654321"
REGION = "eu-west-1"


@pytest.fixture(scope="module")
def foreign(lab_stack: Lab, tmp_path_factory: pytest.TempPathFactory, trained_model_path: Path) -> Iterator[Lab]:
    """The lab brought up by `up`'s recipe (services: mlflow and the API; the emulator is the session's) with the
    SDK configured for another account and region."""
    settings = lab_stack.settings.model_copy(
        update={
            "prefix": "lab-eu",
            "state_dir": tmp_path_factory.mktemp("eu"),
            "mlflow_port": free_port(),
            "api_port": free_port(),
        }
    )
    # Any secret passes MiniStack's header signatures, but it checks SigV4 presigned URLs (mlflow's artifact
    # downloads) against the secret "test": that one, then.
    with (
        isolated_environment(
            AWS_ACCESS_KEY_ID=ACCOUNT, AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION
        ),
        running_lab(settings, [registry.SERVICE_NAME, services.API], model=trained_model_path) as lab,
    ):
        yield lab


def test_everything_is_in_that_region_and_account(foreign: Lab) -> None:
    aws, settings = foreign.aws, foreign.settings
    assert (aws.region, aws.account_id) == (REGION, ACCOUNT)
    function = aws.client("lambda").get_function(FunctionName=settings.function_name)["Configuration"]
    assert f":{REGION}:{ACCOUNT}:function:" in function["FunctionArn"]
    assert f"::{ACCOUNT}:role/" in function["Role"]
    assert all(f":{REGION}:{ACCOUNT}:layer:" in layer["Arn"] for layer in function["Layers"])
    location = aws.client("s3").get_bucket_location(Bucket=settings.input_bucket)["LocationConstraint"]
    assert location == REGION
    sqs = aws.client("sqs")
    queue = sqs.get_queue_url(QueueName=settings.failure_queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert arn == f"arn:aws:sqs:{REGION}:{ACCOUNT}:{settings.failure_queue_name}"


def test_its_resources_are_tagged_there(foreign: Lab) -> None:
    """The tagging API of that account and region finds the lab by its tag, with that account's ARNs."""
    arns = set(tagged_arns(foreign.aws, foreign.settings.prefix))
    settings = foreign.settings
    assert f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{settings.function_name}" in arns, arns
    assert f"arn:aws:sqs:{REGION}:{ACCOUNT}:{settings.failure_queue_name}" in arns, arns
    assert {f"arn:aws:s3:::{bucket}" for bucket in settings.buckets} <= arns, arns


def test_upload_gets_predictions_there(foreign: Lab, sample_csv: Path, tmp_path: Path) -> None:
    result = jobs.predict_file(foreign.settings, foreign.aws, sample_csv, key="eu/sample.csv", out_dir=tmp_path)
    assert (result.status, result.rows) == ("ok", 500)


def test_the_default_account_sees_none_of_it(foreign: Lab, lab_stack: Lab) -> None:
    """Accounts are separate: the session's (default) account finds no bucket or function of this one."""
    with pytest.raises(ClientError) as caught:
        lab_stack.aws.client("s3").head_bucket(Bucket=foreign.settings.input_bucket)
    assert error_code(caught.value) in {"404", "403", "NoSuchBucket", "AccessDenied"}
    names = {f["FunctionName"] for f in lab_stack.aws.client("lambda").list_functions()["Functions"]}
    assert foreign.settings.function_name not in names


def test_registry_and_api_there(foreign: Lab) -> None:
    settings, aws = foreign.settings, foreign.aws
    logged = training.train_and_log(settings, rows=3000, seed=4, run_name="eu")
    registry.promote(settings, aws, logged.version)
    assert model.live_version(settings, aws) == logged.version
    artifacts = aws.client("s3").list_objects_v2(Bucket=settings.model_bucket, Prefix="mlflow/")
    assert artifacts.get("KeyCount", 0) > 0, "mlflow's artifacts belong in that account's model bucket"
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=settings.api_url, timeout=10) as api:
        while api.get("/metadata").json().get("version") != logged.version:
            assert time.monotonic() < deadline, "the API did not pick up the promoted version"
            time.sleep(0.2)
        answer = api.post("/predict", json=[RECORD])
    assert answer.status_code == 200 and answer.json()["model"]["version"] == logged.version, answer.text


def test_teardown_there_leaves_nothing(foreign: Lab) -> None:
    settings, aws = foreign.settings, foreign.aws
    names = {row.version for row in registry.list_versions(settings)}
    assert names, "the registry has the versions trained there"
    report = teardown(settings, aws)
    assert report.complete, (report.left, report.unchecked)
    deleted = {(c.kind, c.name) for c in report.changes if c.action == "deleted"}
    assert ("registered model", settings.model_name) in deleted, report.changes
    assert registry.list_versions(settings) == [], "no version may point into the deleted model bucket"
    fresh = Aws()
    assert not [b for b in fresh.client("s3").list_buckets()["Buckets"] if b["Name"].startswith("lab-eu-")]
    assert settings.function_name not in {
        f["FunctionName"] for f in fresh.client("lambda").list_functions()["Functions"]
    }
    assert not [r for r in fresh.client("iam").list_roles()["Roles"] if r["RoleName"].startswith("lab-eu-")]
