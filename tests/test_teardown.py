"""Tags on everything the lab creates, and a teardown that deletes all of it and proves it.

On the session's emulator under prefixes of their own (the session's resources stay up), with LAB_TAGS set as a
user would: bootstrap tags every resource and repairs tags someone removed (a dry run only reports it), teardown
deletes everything including the ECR repositories, the SageMaker role and the registry's entries of the prefix, and
its check afterwards finds what is left when something is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from typer.testing import CliRunner

from mlops_lab import image, ownership, registry, sagemaker, training
from mlops_lab.aws import bucket_tags, tag_dict, tag_list
from mlops_lab.bootstrap import bootstrap, build_lambda_layer, ensure_bucket
from mlops_lab.cli import app
from mlops_lab.errors import ExitCode
from mlops_lab.settings import PREFIX_TAG, Settings
from mlops_lab.teardown import checks, tagged_arns, teardown
from tests.support import Lab, isolated_environment

USER_TAGS = {"team": "ml-platform", "cost-center": "1234"}


@pytest.fixture(scope="module")
def tagged(lab_stack: Lab) -> Iterator[Lab]:
    """Bootstrap under prefix lab-tags with LAB_TAGS, plus the resources `image push` and `deploy sagemaker` make
    before anything is built or deployed (both ECR repositories, the SageMaker role)."""
    settings = lab_stack.settings.model_copy(update={"prefix": "lab-tags", "tags": USER_TAGS})
    aws = lab_stack.aws
    try:
        bootstrap(settings, aws, build_lambda_layer(settings, aws))
        image.ensure_repository(settings, aws)
        sagemaker.ensure_repository(settings, aws)
        sagemaker.ensure_role(settings, aws)
        yield Lab(settings, aws)
    finally:
        teardown(settings, aws)


def resource_tags(lab: Lab) -> dict[str, dict[str, str]]:
    """Every tagged resource of the lab, read back from its own service: {resource: tags}."""
    settings, aws = lab.settings, lab.aws
    lam, sqs, iam, logs, ecr = (aws.client(name) for name in ("lambda", "sqs", "iam", "logs", "ecr"))
    found = {f"bucket {b}": bucket_tags(aws.client("s3"), b) for b in settings.buckets}
    queue_url = sqs.get_queue_url(QueueName=settings.failure_queue_name)["QueueUrl"]
    found["queue"] = sqs.list_queue_tags(QueueUrl=queue_url).get("Tags", {})
    found["function"] = lam.get_function(FunctionName=settings.function_name).get("Tags", {})
    (group,) = logs.describe_log_groups(logGroupNamePrefix=settings.log_group)["logGroups"]
    found["log group"] = logs.list_tags_for_resource(resourceArn=group["arn"].removesuffix(":*"))["tags"]
    for role in (settings.role_name, settings.sagemaker_role_name):
        found[f"role {role}"] = tag_dict(iam.list_role_tags(RoleName=role)["Tags"])
    for repository in ecr.describe_repositories(
        repositoryNames=[settings.api_repository, settings.sagemaker_repository]
    )["repositories"]:
        found[f"ecr {repository['repositoryName']}"] = tag_dict(
            ecr.list_tags_for_resource(resourceArn=repository["repositoryArn"])["tags"]
        )
    return found


def test_every_resource_carries_the_prefix_tag_and_the_users_tags(tagged: Lab) -> None:
    wanted = {PREFIX_TAG: "lab-tags", **USER_TAGS}
    found = resource_tags(tagged)
    assert len(found) == 10  # 3 buckets, queue, function, log group, 2 roles, 2 repositories
    missing = {name: tags for name, tags in found.items() if {k: tags.get(k) for k in wanted} != wanted}
    assert not missing, missing
    # The log group is bootstrap's (Lambda would make one untagged and keep it forever).
    (group,) = tagged.aws.client("logs").describe_log_groups(logGroupNamePrefix=tagged.settings.log_group)["logGroups"]
    assert group["retentionInDays"] == tagged.settings.log_retention_days


def test_the_tagging_api_finds_the_lab_by_its_tag(tagged: Lab) -> None:
    arns = set(tagged_arns(tagged.aws, "lab-tags"))
    settings = tagged.settings
    # IAM roles and log groups are not there (teardown's check looks for those by name).
    for name in (*settings.buckets, settings.function_name, settings.failure_queue_name, settings.api_repository):
        assert any(arn.endswith((f":{name}", f"/{name}")) for arn in arns), (name, arns)


def test_tags_someone_removed_are_put_back_and_a_dry_run_only_says_so(tagged: Lab) -> None:
    settings, aws = tagged.settings, tagged.aws
    s3, sqs, iam, lam, logs = (aws.client(name) for name in ("s3", "sqs", "iam", "lambda", "logs"))
    s3.delete_bucket_tagging(Bucket=settings.output_bucket)
    queue_url = sqs.get_queue_url(QueueName=settings.failure_queue_name)["QueueUrl"]
    sqs.untag_queue(QueueUrl=queue_url, TagKeys=[PREFIX_TAG])
    iam.untag_role(RoleName=settings.role_name, TagKeys=["team"])
    function_arn = lam.get_function(FunctionName=settings.function_name)["Configuration"]["FunctionArn"]
    lam.tag_resource(Resource=function_arn, Tags={"cost-center": "9999", "owner": "someone"})
    (group,) = logs.describe_log_groups(logGroupNamePrefix=settings.log_group)["logGroups"]
    logs.untag_resource(resourceArn=group["arn"].removesuffix(":*"), tagKeys=[PREFIX_TAG])
    before = resource_tags(tagged)

    layer = build_lambda_layer(settings, aws)
    planned = {(c.kind, c.name): (c.action, c.detail) for c in bootstrap(settings, aws, layer, dry_run=True)}
    # Without the prefix tag a resource is not the lab's any more (mlops_lab.ownership): refused without --adopt.
    # Those that still carry it only lack the user's tags: repaired as before.
    lost_prefix = {
        ("bucket", settings.output_bucket),
        ("queue", settings.failure_queue_name),
        ("log group", settings.log_group),
    }
    tags_to_fix = lost_prefix | {("role", settings.role_name), ("function", settings.function_name)}
    assert {key for key, (action, _) in planned.items() if action != "unchanged"} == tags_to_fix, planned
    assert all(planned[key][0] == "not ours" for key in lost_prefix), planned
    assert all(planned[key] == ("updated", "tags") for key in tags_to_fix - lost_prefix), planned
    with pytest.raises(ownership.NotOurs) as refused:
        bootstrap(settings, aws, layer)
    assert all(name in str(refused.value) for _, name in lost_prefix), refused.value
    adopting = {
        (c.kind, c.name): (c.action, c.detail) for c in bootstrap(settings, aws, layer, dry_run=True, adopt=True)
    }
    assert all(adopting[key] == ("updated", "tags") for key in tags_to_fix), adopting
    assert resource_tags(tagged) == before, "dry runs and a refusal change nothing"

    repaired = bootstrap(settings, aws, layer, adopt=True)
    assert {(c.kind, c.name) for c in repaired if c.action == "updated"} == tags_to_fix
    test_every_resource_carries_the_prefix_tag_and_the_users_tags(tagged)
    function_tags = lam.get_function(FunctionName=settings.function_name)["Tags"]
    assert function_tags["owner"] == "someone", "tags the lab does not set are left alone"
    assert {c.action for c in bootstrap(settings, aws, layer)} == {"unchanged"}


def test_lab_tags_are_validated_as_aws_takes_them() -> None:
    with isolated_environment(LAB_TAGS="team=ml, cost-center=1234"):
        assert Settings(_env_file=None).resource_tags == {PREFIX_TAG: "mlops-lab", "team": "ml", "cost-center": "1234"}
    with isolated_environment(LAB_TAGS='{"team": "ml"}'):
        assert Settings(_env_file=None).tags == {"team": "ml"}
    for bad in ("team", "aws:x=1", f"{PREFIX_TAG}=other", "t=" + "v" * 257, "k=a;b"):
        with isolated_environment(LAB_TAGS=bad), pytest.raises(ValueError, match=r"LAB_TAGS|tag"):
            Settings(_env_file=None)


# -- teardown ------------------------------------------------------------------------------------------------------


def lab_under(lab: Lab, prefix: str, **update: Any) -> Lab:
    return Lab(lab.settings.model_copy(update={"prefix": prefix, **update}), lab.aws)


def test_teardown_deletes_everything_and_its_check_agrees(lab_stack: Lab) -> None:
    lab = lab_under(lab_stack, "lab-gone")
    settings, aws = lab.settings, lab.aws
    bootstrap(settings, aws, build_lambda_layer(settings, aws))
    image.ensure_repository(settings, aws)
    sagemaker.ensure_repository(settings, aws)
    sagemaker.ensure_role(settings, aws)
    aws.client("s3").put_object(Bucket=settings.model_bucket, Key="mlflow/1/artifact.txt", Body=b"x")
    aws.client("logs").create_log_group(logGroupName=settings.sagemaker_log_group)  # what an endpoint makes on AWS

    report = teardown(settings, aws)
    deleted = {(c.kind, c.name) for c in report.changes if c.action == "deleted"}
    assert {
        ("log group", settings.log_group),
        ("log group", f"/aws/sagemaker/Endpoints/{settings.sagemaker_endpoint}"),
        ("role", settings.sagemaker_role_name),
        ("ecr repository", settings.api_repository),
        ("ecr repository", settings.sagemaker_repository),
        ("bucket", settings.model_bucket),
    } <= deleted, report.changes
    assert report.complete, (report.left, report.unchecked)
    assert {check.service for check in report.checks} >= {"S3", "Lambda", "IAM", "SQS", "ECR", "CloudWatch Logs"}
    assert all(check.checked and not check.left for check in report.checks if check.service != "SageMaker")
    assert checks(settings, aws)[-1].service == "Tagging API"


def test_the_check_finds_what_is_left(lab_stack: Lab) -> None:
    """Something of the lab's that teardown did not delete (made again behind its back) is reported, by name and by
    tag, and the report is not complete."""
    lab = lab_under(lab_stack, "lab-left")
    settings, aws = lab.settings, lab.aws
    sqs = aws.client("sqs")
    teardown(settings, aws)
    url = sqs.create_queue(QueueName=settings.failure_queue_name, tags=settings.resource_tags)["QueueUrl"]
    try:
        found = {check.service: check.left for check in checks(settings, aws)}
        assert found["SQS"] == (url,)
        assert any(arn.endswith(f":{settings.failure_queue_name}") for arn in found["Tagging API"]), found
        assert not found["S3"] and not found["Lambda"] and not found["IAM"]
    finally:
        sqs.delete_queue(QueueUrl=url)


def test_cli_teardown_prints_its_checks_and_fails_when_something_is_left(
    lab_stack: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No tracking server at mlflow port 9: the registry is "not checked", which does not fail the teardown.
    settings = lab_stack.settings.model_copy(update={"prefix": "lab-cli-gone", "mlflow_port": 9})
    runner = CliRunner()
    with isolated_environment(settings):
        clean = runner.invoke(app, ["teardown", "--yes"])
        assert clean.exit_code == 0, clean.output
        for line in ("S3", "Lambda", "IAM", "SQS", "ECR", "CloudWatch Logs", "SageMaker", "Tagging API"):
            assert line in clean.output
        assert "Nothing of the lab's is left." in clean.output

        # A role of the lab's (its tags say so) that IAM will not delete: teardown goes on with the rest and says what
        # is left, with its own exit code.
        iam = lab_stack.aws.client("iam")
        role = settings.role_name
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json_trust(), Tags=tag_list(settings.resource_tags))
        monkeypatch.setattr("mlops_lab.teardown._delete_role", lambda iam, name: [])
        left = runner.invoke(app, ["teardown", "--yes"])
        iam.delete_role(RoleName=role)
    assert left.exit_code == ExitCode.INCOMPLETE, left.output
    # The role is named where the check says what it found, not only where it says what it looked for.
    text = " ".join(left.output.split())
    assert re.search(rf"IAM roles [^:]*: still there: {re.escape(role)}\b", text), left.output
    assert f"teardown is not complete: IAM: {role}" in text, left.output


def json_trust() -> str:
    import json

    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
    )


# -- the registry goes with the model bucket, or stays with its artifacts --------------------------------------------


@pytest.fixture
def registered(mlflow_lab: Lab, trained_model_path: Path) -> Lab:
    """A model registered under a prefix of its own on the session's tracking server (as `publish` logs one)."""
    from mlops_lab.data import FEATURES
    from mlops_lab.synthetic import generate

    lab = lab_under(mlflow_lab, "lab-reg")
    example = generate(5, seed=3, with_label=False)[list(FEATURES)]
    training.log_imported(
        lab.settings, "lab-reg-model", trained_model_path.read_bytes(), example, kind="classifier", origin="test"
    )
    return lab


def test_teardown_deletes_the_prefixs_registry_entries_and_the_name_can_be_used_again(registered: Lab) -> None:
    settings, aws = registered.settings, registered.aws
    client = registry.client(settings)
    session_models = {m.name for m in client.search_registered_models()} - {"lab-reg-model"}
    assert client.get_registered_model("lab-reg-model").tags[PREFIX_TAG] == "lab-reg"

    report = teardown(settings, aws)
    deleted = {(c.kind, c.name) for c in report.changes if c.action == "deleted"}
    assert ("registered model", "lab-reg-model") in deleted and ("experiment", "lab-reg-model") in deleted
    assert {m.name for m in client.search_registered_models()} == session_models, "only this prefix's entries go"
    assert client.get_experiment_by_name("lab-reg-model") is None
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    assert mlflow.set_experiment("lab-reg-model").lifecycle_stage == "active", "the name is free again"
    reused = client.get_experiment_by_name("lab-reg-model").experiment_id
    client.rename_experiment(reused, f"lab-reg-model (test {reused})")  # so the next test can use the name too
    client.delete_experiment(reused)


def test_keep_registry_keeps_the_artifacts_and_the_entries(registered: Lab) -> None:
    settings, aws = registered.settings, registered.aws
    s3 = aws.client("s3")
    ensure_bucket(aws, settings.model_bucket, settings.resource_tags)  # as bootstrap makes it: tagged, the lab's
    s3.put_object(Bucket=settings.model_bucket, Key="mlflow/7/model.onnx", Body=b"artifact")
    s3.put_object(Bucket=settings.model_bucket, Key=settings.model_key, Body=b"live model")
    try:
        report = teardown(settings, aws, keep_registry=True)
        assert report.complete, (report.left, report.unchecked)
        assert report.kept and settings.model_bucket in report.kept[0]
        (bucket,) = [c for c in report.changes if (c.kind, c.name) == ("bucket", settings.model_bucket)]
        assert bucket.action == "updated" and "--keep-registry" in bucket.detail, bucket
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=settings.model_bucket).get("Contents", [])]
        assert keys == ["mlflow/7/model.onnx"]
        assert registry.client(settings).get_registered_model("lab-reg-model").name == "lab-reg-model"
    finally:
        teardown(settings, aws)
