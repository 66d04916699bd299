"""The lab touches only what carries its tag: bootstrap refuses resources of its names that are not its own (until
--adopt), teardown keeps them, the registry loses only the versions the lab made, and two long prefixes never share
SageMaker names."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from mlops_lab import image, ownership, registry, sagemaker, training
from mlops_lab.aws import tag_dict, tag_list
from mlops_lab.bootstrap import bootstrap, build_lambda_layer
from mlops_lab.cli import app
from mlops_lab.errors import ExitCode, LabError
from mlops_lab.plan import Assumptions, make_plan
from mlops_lab.sagemaker.delete import CONFIG_SUFFIX, MODEL_SUFFIX, UNIQUE_ID_LENGTH, mlflow_base_name, name_pattern
from mlops_lab.settings import PREFIX_TAG, Settings, get_settings
from mlops_lab.teardown import lab_repositories, lab_roles, teardown
from tests.support import Lab, isolated_environment

runner = CliRunner()


def lab_of(lab: Lab, prefix: str) -> Lab:
    return Lab(Settings(**{**lab.settings.model_dump(), "prefix": prefix}), lab.aws)


@pytest.fixture
def strange_bucket(lab_stack: Lab) -> Iterator[Lab]:
    """A lab whose input bucket's name is already taken by an untagged bucket (someone else's, as far as tags say)."""
    lab = lab_of(lab_stack, "lab-own-a")
    s3 = lab.aws.client("s3")
    s3.create_bucket(Bucket=lab.settings.input_bucket)
    s3.put_object(Bucket=lab.settings.input_bucket, Key="theirs.txt", Body=b"not the lab's")
    yield lab
    teardown(lab.settings, lab.aws)  # the adopted bucket goes with the lab; one still not adopted stays
    if ownership.strangers(lab.settings, lab.aws):
        for item in s3.list_objects_v2(Bucket=lab.settings.input_bucket).get("Contents", []):
            s3.delete_object(Bucket=lab.settings.input_bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=lab.settings.input_bucket)


def test_bootstrap_refuses_a_resource_of_its_name_without_its_tag_until_adopt(strange_bucket: Lab) -> None:
    settings, aws = strange_bucket.settings, strange_bucket.aws
    layer = build_lambda_layer(settings, aws)

    planned = {(c.kind, c.name): c for c in bootstrap(settings, aws, layer, dry_run=True)}
    refused = planned[("bucket", settings.input_bucket)]
    assert refused.action == "not ours" and "--adopt" in refused.detail, refused

    with pytest.raises(ownership.NotOurs) as caught:
        bootstrap(settings, aws, layer)
    assert caught.value.exit_code == ExitCode.CONFLICT
    assert settings.input_bucket in str(caught.value) and "--adopt" in str(caught.value)
    found = [(s.resource.kind, s.resource.name, s.why) for s in ownership.strangers(settings, aws)]
    assert found == [("bucket", settings.input_bucket, f"no {PREFIX_TAG} tag")]
    assert aws.client("sqs").list_queues(QueueNamePrefix=settings.failure_queue_name).get("QueueUrls", []) == [], (
        "refused before any write"
    )

    adopted = {(c.kind, c.name): c for c in bootstrap(settings, aws, layer, adopt=True)}
    assert adopted[("bucket", settings.input_bucket)].action == "updated"
    assert ownership.strangers(settings, aws) == []
    assert {c.action for c in bootstrap(settings, aws, layer)} == {"unchanged"}


def test_the_cli_exits_11_naming_what_is_not_ours_and_adopts_with_the_flag(
    strange_bucket: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAB_PREFIX", strange_bucket.settings.prefix)
    monkeypatch.setenv("LAB_STATE_DIR", str(strange_bucket.settings.state_dir))
    monkeypatch.setenv("LAB_EMULATOR_PORT", str(strange_bucket.settings.emulator_port))
    get_settings.cache_clear()
    try:
        refused = runner.invoke(app, ["bootstrap"])
        assert refused.exit_code == ExitCode.CONFLICT, refused.output
        assert strange_bucket.settings.input_bucket in refused.output and "--adopt" in refused.output
        plan = runner.invoke(app, ["plan"])
        assert plan.exit_code == 0 and "not ours" in plan.output, plan.output
        adopted = runner.invoke(app, ["bootstrap", "--adopt"])
        assert adopted.exit_code == 0, adopted.output
    finally:
        get_settings.cache_clear()


def test_teardown_deletes_only_what_carries_the_tag(lab_stack: Lab) -> None:
    lab = lab_of(lab_stack, "lab-own-b")
    settings, aws = lab.settings, lab.aws
    bootstrap(settings, aws, build_lambda_layer(settings, aws))
    sqs, iam, ecr, lam = (aws.client(name) for name in ("sqs", "iam", "ecr", "lambda"))
    # The queue becomes another lab's, the role loses its tag, the API's repository is made by someone else, and a
    # layer version the lab did not publish appears beside its own.
    queue_url = sqs.get_queue_url(QueueName=settings.failure_queue_name)["QueueUrl"]
    sqs.tag_queue(QueueUrl=queue_url, Tags={PREFIX_TAG: "another-lab"})
    iam.untag_role(RoleName=settings.role_name, TagKeys=[PREFIX_TAG])
    ecr.create_repository(repositoryName=settings.api_repository, tags=tag_list({"owner": "someone"}, "Key", "Value"))
    lam.publish_layer_version(
        LayerName=settings.layer_name, Description="someone's layer", Content={"ZipFile": b"PK\x05\x06" + b"\0" * 18}
    )
    try:
        report = teardown(settings, aws)
        kept = {(c.kind, c.name): c.detail for c in report.changes if c.action == "not ours"}
        assert set(kept) == {
            ("queue", settings.failure_queue_name),
            ("role", settings.role_name),
            ("ecr repository", settings.api_repository),
            ("layer", settings.layer_name),
        }, report.changes
        assert "another-lab" in kept[("queue", settings.failure_queue_name)]
        assert report.complete, (report.left, report.unchecked)
        # Kept, and whole.
        assert sqs.get_queue_url(QueueName=settings.failure_queue_name)["QueueUrl"] == queue_url
        assert iam.get_role(RoleName=settings.role_name)["Role"]["RoleName"] == settings.role_name
        assert iam.list_role_policies(RoleName=settings.role_name)["PolicyNames"], "its policy stays with it"
        assert ecr.describe_repositories(repositoryNames=[settings.api_repository])["repositories"]
        (layer_left,) = lam.list_layer_versions(LayerName=settings.layer_name)["LayerVersions"]
        assert layer_left["Description"] == "someone's layer"
        # The lab's own are gone.
        assert ownership.inventory(settings)[0].read_tags(aws) is None, "the function is gone"
        buckets = {b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]}
        assert not buckets & set(settings.buckets)
    finally:
        sqs.delete_queue(QueueUrl=queue_url)
        for policy in iam.list_role_policies(RoleName=settings.role_name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=settings.role_name, PolicyName=policy)
        iam.delete_role(RoleName=settings.role_name)
        ecr.delete_repository(repositoryName=settings.api_repository, force=True)
        for version in lam.list_layer_versions(LayerName=settings.layer_name)["LayerVersions"]:
            lam.delete_layer_version(LayerName=settings.layer_name, VersionNumber=version["Version"])


def test_plan_says_what_image_push_and_deploy_sagemaker_would_refuse_or_adopt(lab_stack: Lab) -> None:
    """Plan lists the inventory's resources other commands make, by their tags: an untagged repository of `image
    push`'s name and another lab's of `deploy sagemaker`'s are "not ours" (or, with adopt, tagged), and the dry run
    changes neither."""
    lab = lab_of(lab_stack, "lab-own-d")
    settings, aws = lab.settings, lab.aws
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName=settings.api_repository)
    theirs = ecr.create_repository(
        repositoryName=settings.sagemaker_repository, tags=tag_list({PREFIX_TAG: "another-lab"}, "Key", "Value")
    )["repository"]["repositoryArn"]
    try:
        assumed = Assumptions(image_mb=100)
        planned = {(c.kind, c.name): c for c in make_plan(settings, aws, assumed, with_sagemaker=True).changes}
        api, sagemaker_repository = (
            planned[("ecr repository", name)] for name in (settings.api_repository, settings.sagemaker_repository)
        )
        assert (api.action, sagemaker_repository.action) == ("not ours", "not ours"), planned
        assert f"no {PREFIX_TAG} tag" in api.detail and "`image push`" in api.detail and "--adopt" in api.detail
        assert "another-lab" in sagemaker_repository.detail and "`deploy sagemaker`" in sagemaker_repository.detail
        assert planned[("role", settings.sagemaker_role_name)].action == "created"
        assert ("ecr repository", settings.api_repository) not in {
            (c.kind, c.name) for c in make_plan(settings, aws, Assumptions(), with_sagemaker=True).changes
        }, "no image assumed: image push's repository is not in the plan"

        adopted = {
            (c.kind, c.name): c for c in make_plan(settings, aws, assumed, with_sagemaker=True, adopt=True).changes
        }
        assert {adopted[("ecr repository", name)].action for name in (api.name, sagemaker_repository.name)} == {
            "updated"
        }
        assert ecr.list_tags_for_resource(resourceArn=theirs)["tags"] == [{"Key": PREFIX_TAG, "Value": "another-lab"}]
        assert ownership.strangers(settings, aws, made_by="image push"), "a dry run tags nothing"
    finally:
        for name in (settings.api_repository, settings.sagemaker_repository):
            ecr.delete_repository(repositoryName=name, force=True)


SOMEONES = {"owner": "someone"}
ANOTHER_LABS = {PREFIX_TAG: "another-lab"}


@pytest.mark.parametrize("their_tags", [SOMEONES, ANOTHER_LABS], ids=["untagged", "another-lab"])
def test_image_push_refuses_a_repository_of_its_name_that_is_not_ours_until_adopt(
    lab_stack: Lab, their_tags: dict[str, str]
) -> None:
    lab = lab_of(lab_stack, "lab-own-f")
    settings, aws = lab.settings, lab.aws
    ecr = aws.client("ecr")
    name = settings.api_repository
    arn = ecr.create_repository(repositoryName=name, tags=tag_list(their_tags, "Key", "Value"))["repository"][
        "repositoryArn"
    ]
    try:
        with pytest.raises(ownership.NotOurs) as caught:
            image.ensure_repository(settings, aws)
        assert caught.value.exit_code == ExitCode.CONFLICT
        message = str(caught.value)
        assert f"ecr repository {name} ({ownership.whose(their_tags)})" in message
        assert "`mlops-lab image push --adopt`" in message
        # Left as it was: its tags, no lifecycle policy of the lab's, no scan-on-push switched on.
        assert tag_dict(ecr.list_tags_for_resource(resourceArn=arn)["tags"]) == their_tags
        with pytest.raises(ecr.exceptions.LifecyclePolicyNotFoundException):
            ecr.get_lifecycle_policy(repositoryName=name)

        uri, change = image.ensure_repository(settings, aws, adopt=True)
        assert (change.action, uri) == (
            "updated",
            ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"],
        )
        assert "tags" in change.detail and "lifecycle policy" in change.detail
        assert tag_dict(ecr.list_tags_for_resource(resourceArn=arn)["tags"]) == {**their_tags, **settings.resource_tags}
        assert ownership.strangers(settings, aws, made_by="image push") == []
        assert image.ensure_repository(settings, aws)[1].action == "unchanged", "now the lab's: no flag needed"
    finally:
        ecr.delete_repository(repositoryName=name, force=True)


def test_the_image_push_command_exits_11_and_adopts_with_the_flag(
    lab_stack: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No engine is needed for this (nor used: the test takes docker away), the repository is made first either way."""
    lab = lab_of(lab_stack, "lab-own-g")
    settings, aws = lab.settings, lab.aws
    ecr = aws.client("ecr")
    name = settings.api_repository
    ecr.create_repository(repositoryName=name)

    def no_engine() -> str:
        raise image.EngineMissing("no engine in this test")

    monkeypatch.setattr(image, "docker_cli", no_engine)
    try:
        with isolated_environment(settings):
            refused = runner.invoke(app, ["image", "push"])
            assert refused.exit_code == ExitCode.CONFLICT, refused.output
            said = " ".join(refused.output.split())
            assert name in said and "--adopt" in said and "ECR repository ready" not in said
            assert ownership.strangers(settings, aws, made_by="image push"), "refused: left untagged"
            adopted = runner.invoke(app, ["image", "push", "--adopt"])
            assert adopted.exit_code == image.EngineMissing.exit_code, adopted.output
            assert "ECR repository ready" in adopted.output and "no engine in this test" in adopted.output
            assert ownership.strangers(settings, aws, made_by="image push") == []
            for command in (["image", "push"], ["deploy", "sagemaker"]):
                helped = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
                assert "--adopt" in helped.output, helped.output
    finally:
        ecr.delete_repository(repositoryName=name, force=True)


def test_deploy_sagemaker_refuses_a_role_or_repository_of_its_names_that_is_not_ours(lab_stack: Lab) -> None:
    """Refused before mlflow or SageMaker is asked anything (neither runs here) and before any write: the role keeps
    its trust policy, gets no policy of the lab's, and both keep their tags."""
    lab = lab_of(lab_stack, "lab-own-h")
    settings, aws = lab.settings, lab.aws
    iam, ecr = aws.client("iam"), aws.client("ecr")
    someones_trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
    role, repository = settings.sagemaker_role_name, settings.sagemaker_repository
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(someones_trust), Tags=tag_list(SOMEONES))
    arn = ecr.create_repository(repositoryName=repository, tags=tag_list(ANOTHER_LABS, "Key", "Value"))["repository"][
        "repositoryArn"
    ]
    try:
        with pytest.raises(ownership.NotOurs) as caught:
            sagemaker.deploy(settings, aws, sagemaker_url="http://127.0.0.1:9", timeout_s=1)
        assert caught.value.exit_code == ExitCode.CONFLICT
        message = str(caught.value)
        assert f"role {role} (no {PREFIX_TAG} tag)" in message
        assert f"ecr repository {repository} (tagged {PREFIX_TAG}=another-lab" in message
        assert "`mlops-lab deploy sagemaker --adopt`" in message
        trust = iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
        assert (json.loads(trust) if isinstance(trust, str) else trust) == someones_trust
        assert iam.list_role_policies(RoleName=role)["PolicyNames"] == []
        assert tag_dict(iam.list_role_tags(RoleName=role)["Tags"]) == SOMEONES
        assert tag_dict(ecr.list_tags_for_resource(resourceArn=arn)["tags"]) == ANOTHER_LABS
    finally:
        iam.delete_role(RoleName=role)
        ecr.delete_repository(repositoryName=repository, force=True)


def test_teardown_goes_by_the_inventorys_names() -> None:
    """Teardown deletes and checks the roles and repositories the inventory holds, each of them; a kind the inventory
    does not have is an error rather than nothing to look for."""
    settings = Settings(_env_file=None, prefix="lab-own-e")
    for kind, listed in (("role", lab_roles(settings)), ("ecr repository", lab_repositories(settings))):
        assert listed == tuple(r.name for r in ownership.inventory(settings) if r.kind == kind)
    assert set(lab_roles(settings)) == {settings.role_name, settings.sagemaker_role_name}
    assert set(lab_repositories(settings)) == {settings.api_repository, settings.sagemaker_repository}
    with pytest.raises(LabError, match="roles") as caught:
        ownership.names(settings, "roles")
    assert caught.value.exit_code == ExitCode.UNEXPECTED


def test_teardown_removes_only_the_versions_the_lab_made_in_someone_elses_registered_model(
    mlflow_lab: Lab, trained_model_path
) -> None:  # type: ignore[no-untyped-def]
    from mlops_lab.data import FEATURES
    from mlops_lab.synthetic import generate

    lab = lab_of(mlflow_lab, "lab-own-c")
    client = registry.client(lab.settings)
    theirs = "someone-elses-model"
    client.create_registered_model(theirs, tags={"owner": "someone"})
    example = generate(5, seed=3, with_label=False)[list(FEATURES)]
    bytes_ = trained_model_path.read_bytes()
    # Someone's own version (no lab tag), then one the lab publishes into the same registered model.
    their_version = client.create_model_version(theirs, source="s3://elsewhere/model", tags={"owner": "someone"})
    ours = training.log_imported(lab.settings, theirs, bytes_, example, kind="classifier", origin="test")
    try:
        assert PREFIX_TAG not in client.get_registered_model(theirs).tags, "publishing claims no one's model"
        assert client.get_model_version(theirs, ours.version).tags[PREFIX_TAG] == "lab-own-c"

        report = teardown(lab.settings, lab.aws)
        assert ("model versions", theirs, "deleted") in {(c.kind, c.name, c.action) for c in report.changes}
        left = {v.version for v in client.search_model_versions(f"name = '{theirs}'")}
        assert left == {their_version.version}, "only the lab's version went"
    finally:
        client.delete_registered_model(theirs)


@pytest.mark.parametrize(
    "prefixes",
    [
        ("team-alpha-project-one-experiment-aaaaa-x", "team-alpha-project-one-experiment-bbbbb-x"),
        ("a" * 20 + "-one-" + "z" * 17, "a" * 20 + "-two-" + "z" * 17),
    ],
)
def test_two_long_prefixes_never_share_sagemaker_names(prefixes: tuple[str, str]) -> None:
    """mlflow middle-truncates long endpoint names in its model and config names; the lab's endpoint names are short
    enough to stay whole, and distinct, so one lab's teardown never matches the other's models or configs."""
    first, second = (Settings(_env_file=None, prefix=prefix) for prefix in prefixes)
    assert first.sagemaker_endpoint != second.sagemaker_endpoint
    for suffix in (MODEL_SUFFIX, CONFIG_SUFFIX):
        for settings in (first, second):
            assert mlflow_base_name(settings.sagemaker_endpoint, suffix) == settings.sagemaker_endpoint
        theirs = f"{second.sagemaker_endpoint}{suffix}{'0' * UNIQUE_ID_LENGTH}"
        assert not name_pattern(first.sagemaker_endpoint, suffix).fullmatch(theirs)
        assert name_pattern(second.sagemaker_endpoint, suffix).fullmatch(theirs)
