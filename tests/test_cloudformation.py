"""`mlops-lab export cloudformation`: the template is bootstrap's definitions, passes cfn-lint, and deploys.

The unit tests check the template against bootstrap's definitions and AWS's own resource specifications (cfn-lint's
schemas), with no server. The integration test deploys it to the session's emulator with the AWS CLI under a prefix of
its own (``lab-cfn``; the session's ``lab-test`` resources are untouched), scores a CSV through it, compares the
stack's resources with what bootstrap would build, deletes the stack and finds nothing left.

What MiniStack 1.5.33's CloudFormation (``ministack/services/cloudformation/provisioners.py``) does not do as AWS
does, and how this file deals with it:

- ``AWS::S3::Bucket`` ``Tags`` are ignored: ``_s3_create`` never stores them and the type is missing from
  ``_STACK_TAG_PROPERTY``, so ``GetBucketTagging`` finds none. The buckets' tags are checked in the template only
  (``test_everything_taggable_carries_the_prefix_tag``, against AWS's schema); the queue's, role's and function's are
  checked on the deployed stack.
- ``_s3_delete`` drops a bucket with its objects, where AWS fails the stack's deletion (``BucketNotEmpty``). The test
  empties the buckets first with ``aws s3 rm --recursive``, as one must on AWS, so it proves nothing about that rule.
- S3 does not check, when the notification is put, that it may invoke a Lambda target (``s3._validate_notification_
  configs`` probes SQS/SNS destinations only), so the emulator would accept the template without the input bucket's
  ``DependsOn`` on the permission that AWS needs: ``test_the_notification_waits_for_its_permission`` checks it.
- A layer version or function whose S3 object is missing is created empty instead of failing (``_lambda_layer_
  create`` stores ``CodeSize`` 0; ``_lambda_create`` falls back to ``CodeSha256`` "cfn-deployed"), and a function's
  ``Role`` is not checked to exist: the test checks the layer's size and the function's code hash itself.
- ``GetFunctionEventInvokeConfig`` without a qualifier does not find the configuration the stack put for
  ``$LATEST`` (``lambda_svc._event_invoke_config`` keys ``""`` and ``"$LATEST"`` apart; AWS takes an unqualified
  function as ``$LATEST``, and CloudFormation requires ``Qualifier``), so bootstrap's dry run over the stack says it
  would create one. The test reads it with ``Qualifier="$LATEST"``, compares it with bootstrap's definition, and
  checks that it works: a failing event lands in the stack's failure queue after its one attempt.
- The invoke permission's statement id is generated (``<stack>-<logical id>-<8 hex>``, as AWS does) and S3 gives the
  notification rule its own id: CloudFormation has no property for either, so bootstrap's ids
  (``s3-invoke-<bucket>``, ``batch-predict-csv``) differ; the comparison with bootstrap says so and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError
from cfnlint.api import ManualArgs, lint
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER
from typer.testing import CliRunner

from mlops_lab import batch_spec, bootstrap, cloudformation, jobs, model, ownership
from mlops_lab.aws import is_not_found
from mlops_lab.cli import app
from mlops_lab.settings import PREFIX_TAG, Settings
from mlops_lab.teardown import teardown
from tests.support import Lab, isolated_environment, parse_csv, report

# The regions cfn-lint checks the template in: one per partition the ARNs must work in, and a second commercial one.
LINT_REGIONS = ["us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"]
AWS_CLI = Path(sys.executable).with_name("aws")  # awscli, a test extra of the project


class SampleAws:
    """What bootstrap reads from ``Aws`` to render a policy, for a sample account."""

    def __init__(self, partition: str = "aws", region: str = "eu-west-1", account_id: str = "123456789012") -> None:
        self.partition, self.region, self.account_id = partition, region, account_id


def settings_for(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **overrides)


def resolve(value: Any, aws: SampleAws, refs: dict[str, Any]) -> Any:
    """``value`` as CloudFormation would resolve it for ``aws``'s account (Ref/GetAtt from ``refs``)."""
    if isinstance(value, list):
        return [resolve(item, aws, refs) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Fn::Sub"}:
        text = value["Fn::Sub"]
        for name, actual in (("Partition", aws.partition), ("Region", aws.region), ("AccountId", aws.account_id)):
            text = text.replace("${AWS::" + name + "}", actual)
        assert "${" not in text.replace("${!", ""), f"unresolved reference in {value}"
        return text.replace("${!", "${")
    if set(value) == {"Ref"}:
        return aws.account_id if value["Ref"] == "AWS::AccountId" else refs[value["Ref"]]
    if set(value) == {"Fn::GetAtt"}:
        return refs[".".join(value["Fn::GetAtt"])]
    return {key: resolve(item, aws, refs) for key, item in value.items()}


def lint_problems(text: str) -> list[str]:
    matches = lint(text, config=ManualArgs(regions=LINT_REGIONS, include_checks=["I"]))
    return [f"{match.rule.id} {match.message} (line {match.linenumber})" for match in matches]


# -- the template, with no server --------------------------------------------------------------------------------


@pytest.mark.parametrize("bundled", [False, True], ids=["layer", "bundled-layer"])
def test_template_passes_cfn_lint(bundled: bool) -> None:
    """cfn-lint, on AWS's own resource specifications, informational checks included, in every partition: no
    finding. (It caught two: YAML anchors for the shared tag list, which CloudFormation rejects, W1101; and the
    queue's unstated DeletionPolicy, I3011.) The YAML is linted (anchors are YAML's); the JSON is the same template."""
    document = cloudformation.template(settings_for(lambda_bundle_layer=bundled))
    text = cloudformation.render(document, "yaml")
    assert lint_problems(text) == []
    assert json.loads(cloudformation.render(document, "json")) == yaml.safe_load(text)


def test_cfn_lint_catches_what_aws_would_refuse() -> None:
    """The lint check is live: a property the resource type does not have, and a dependency cycle, are findings."""
    document = cloudformation.template(settings_for())
    document["Resources"][cloudformation.FUNCTION]["Properties"]["MemorySizeMb"] = 1024
    arn = {"Fn::GetAtt": [cloudformation.INPUT_BUCKET, "Arn"]}  # what makes the classic cycle
    document["Resources"][cloudformation.INVOKE_PERMISSION]["Properties"]["SourceArn"] = arn
    found = {problem.split()[0] for problem in lint_problems(cloudformation.render(document))}
    assert {"E3002", "E3004"} <= found, found


def test_template_is_what_bootstrap_builds() -> None:
    """Every resource's properties, resolved as CloudFormation would for a sample account, equal bootstrap's own
    definitions for the same settings (non-default ones, so a setting the template ignored would show)."""
    settings = settings_for(
        prefix="acme-ml",
        lambda_memory_mb=2048,
        lambda_timeout_s=120,
        lambda_retry_attempts=1,
        max_input_mb=64,
        model_key="models/${team}/model.onnx",  # literal: Fn::Sub must not take it for a reference
    )
    aws = SampleAws("aws-cn", "cn-north-1", "210987654321")
    refs = {
        "ExecutionRole.Arn": "ROLE-ARN",
        "Layer": "LAYER-ARN",
        "Function": "FUNCTION-NAME",
        "Function.Arn": "FUNCTION-ARN",
        "FailureQueue.Arn": "QUEUE-ARN",
        "ArtifactBucket": "ARTIFACTS",
        "FunctionKey": "FUNCTION-KEY",
        "LayerKey": "LAYER-KEY",
        "LayerDescription": "LAYER-DESCRIPTION",
    }
    document = cloudformation.template(settings)
    resources = {
        logical_id: resolve(resource["Properties"], aws, refs) for logical_id, resource in document["Resources"].items()
    }
    kinds = {logical_id: resource["Type"] for logical_id, resource in document["Resources"].items()}
    assert sorted(kinds.values()) == sorted(
        ["AWS::S3::Bucket"] * 3
        + [
            "AWS::SQS::Queue",
            "AWS::IAM::Role",
            "AWS::Logs::LogGroup",
            "AWS::Lambda::LayerVersion",
            "AWS::Lambda::Function",
            "AWS::Lambda::EventInvokeConfig",
            "AWS::Lambda::Permission",
        ]
    )
    buckets = {resources[logical_id]["BucketName"] for logical_id, kind in kinds.items() if kind == "AWS::S3::Bucket"}
    assert buckets == set(settings.buckets)

    queue = resources[cloudformation.FAILURE_QUEUE]
    assert queue["QueueName"] == settings.failure_queue_name
    assert queue["MessageRetentionPeriod"] == batch_spec.FAILURE_RETENTION_S

    role = resources[cloudformation.ROLE]
    assert role["RoleName"] == settings.role_name
    assert role["AssumeRolePolicyDocument"] == batch_spec.trust_policy()
    assert role["Policies"] == [
        {"PolicyName": batch_spec.INLINE_POLICY_NAME, "PolicyDocument": batch_spec.execution_policy(settings, aws)}
    ]

    log_group = resources[cloudformation.LOG_GROUP]
    assert log_group["LogGroupName"] == settings.log_group == f"/aws/lambda/{settings.function_name}"
    assert log_group["RetentionInDays"] == settings.log_retention_days

    layer = resources[cloudformation.LAYER]
    assert layer["LayerName"] == settings.layer_name
    assert layer["Content"] == {"S3Bucket": "ARTIFACTS", "S3Key": "LAYER-KEY"}
    assert layer["CompatibleRuntimes"] == [settings.lambda_runtime]

    function = resources[cloudformation.FUNCTION]
    wanted = batch_spec.function_configuration(settings, "ROLE-ARN", "LAYER-ARN")
    assert {key: function[key] for key in wanted} == wanted
    assert function["Environment"] == {"Variables": batch_spec.function_environment(settings)}
    assert function["FunctionName"] == settings.function_name
    assert function["Handler"] == batch_spec.FUNCTION_HANDLER
    assert function["Description"] == batch_spec.FUNCTION_DESCRIPTION
    assert function["Code"] == {"S3Bucket": "ARTIFACTS", "S3Key": "FUNCTION-KEY"}

    invoke = resources[cloudformation.ASYNC_INVOCATION]
    assert invoke == {
        "FunctionName": "FUNCTION-NAME",
        "Qualifier": "$LATEST",
        **batch_spec.async_invocation(settings, "QUEUE-ARN"),
    }

    permission = resources[cloudformation.INVOKE_PERMISSION]
    assert permission == {
        "Action": "lambda:InvokeFunction",
        "FunctionName": "FUNCTION-ARN",
        "Principal": "s3.amazonaws.com",
        "SourceArn": f"arn:aws-cn:s3:::{settings.input_bucket}",
        "SourceAccount": "210987654321",
    }

    (rule,) = batch_spec.notification_configuration("FUNCTION-ARN")["LambdaFunctionConfigurations"]
    assert resources[cloudformation.INPUT_BUCKET]["NotificationConfiguration"] == {
        "LambdaConfigurations": [
            {
                "Event": event,
                "Function": "FUNCTION-ARN",
                "Filter": {"S3Key": {"Rules": rule["Filter"]["Key"]["FilterRules"]}},
            }
            for event in rule["Events"]
        ]
    }


def test_bundled_layer_means_no_layer_resource() -> None:
    """With LAB_LAMBDA_BUNDLE_LAYER bootstrap publishes no layer and the code zip carries it: so does the template."""
    document = cloudformation.template(settings_for(lambda_bundle_layer=True))
    assert cloudformation.LAYER not in document["Resources"]
    assert {cloudformation.LAYER_KEY, cloudformation.LAYER_DESCRIPTION}.isdisjoint(document["Parameters"])
    assert "Layers" not in document["Resources"][cloudformation.FUNCTION]["Properties"]


def test_the_notification_waits_for_its_permission() -> None:
    """AWS checks, when the notification is put, that S3 may invoke the function, and the permission names the
    bucket: the permission uses the bucket's name (no reference, no cycle) and the bucket is created after it. The
    emulator checks neither, so this is the only test that would catch it."""
    resources = cloudformation.template(settings_for())["Resources"]
    assert resources[cloudformation.INPUT_BUCKET]["DependsOn"] == cloudformation.INVOKE_PERMISSION
    source_arn = json.dumps(resources[cloudformation.INVOKE_PERMISSION]["Properties"]["SourceArn"])
    assert cloudformation.INPUT_BUCKET not in source_arn


def test_everything_taggable_carries_the_prefix_tag() -> None:
    """Every resource whose type takes tags (AWS's resource schemas, through cfn-lint) has ``mlops-lab:prefix``."""
    settings = settings_for(prefix="acme-ml")
    resources = cloudformation.template(settings)["Resources"]
    taggable = {
        logical_id
        for logical_id, resource in resources.items()
        if "Tags" in PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", resource["Type"]).schema["properties"]
    }
    assert taggable == {
        "InputBucket",
        "OutputBucket",
        "ModelBucket",
        "FailureQueue",
        "ExecutionRole",
        "FunctionLogGroup",
        "Function",
    }
    for logical_id in taggable:
        tags = resources[logical_id]["Properties"].get("Tags", [])
        assert {"Key": PREFIX_TAG, "Value": "acme-ml"} in tags, logical_id


def taggable(resource: dict[str, Any]) -> bool:
    """Does the resource's type take tags (AWS's resource schema, through cfn-lint)?"""
    return "Tags" in PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", resource["Type"]).schema["properties"]


@pytest.mark.parametrize(
    "settings",
    [
        settings_for(),
        settings_for(prefix="acme-ml", tags={"team": "ml", "cost-center": "1234"}),
        settings_for(prefix="acme-ml", lambda_bundle_layer=True),
    ],
    ids=["default", "own-tags", "bundled-layer"],
)
def test_the_template_and_the_inventory_hold_the_same_resources(settings: Settings) -> None:
    """The export and what bootstrap, plan and teardown go by cannot drift apart: every resource of the inventory
    bootstrap makes is in the template under its logical id, type and name with the lab's tags, every taggable
    resource of the template is in the inventory, and what other commands make is not in the stack."""
    resources = cloudformation.template(settings)["Resources"]
    lab_tags = [{"Key": key, "Value": value} for key, value in settings.resource_tags.items()]
    assert {"Key": PREFIX_TAG, "Value": settings.prefix} in lab_tags
    held = {}
    for resource in ownership.inventory(settings):
        if resource.made_by != "bootstrap":
            assert resource.stack is None, f"{resource.kind} {resource.name} is made by `{resource.made_by}`"
            continue
        assert resource.stack is not None, f"bootstrap makes {resource.kind} {resource.name}: the stack must hold it"
        declared = resources[resource.stack.logical_id]
        assert declared["Type"] == resource.stack.type
        schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", declared["Type"]).schema["properties"]
        assert resource.stack.name_property in schema, f"{declared['Type']} has no {resource.stack.name_property}"
        assert declared["Properties"][resource.stack.name_property] == resource.name
        assert declared["Properties"]["Tags"] == lab_tags, resource.stack.logical_id
        held[resource.stack.logical_id] = resource
    assert {logical_id for logical_id, declared in resources.items() if taggable(declared)} == set(held)
    names = {v for declared in resources.values() for v in declared["Properties"].values() if isinstance(v, str)}
    others = {r.name for r in ownership.inventory(settings) if r.made_by != "bootstrap"}
    assert not names & others, "a resource another command makes is in the stack"


def test_a_resource_the_inventory_gains_or_loses_fails_the_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """The template declares what the inventory holds, no more and no less: an inventory resource the template does
    not declare yet, or one it declares that the inventory no longer holds, is an error, not a silent difference."""
    original = ownership.inventory

    def with_api_repository(settings: Settings) -> list[ownership.Resource]:
        (repository,) = [r for r in original(settings) if r.name == settings.api_repository]
        stack = ownership.StackEntry("ApiRepository", "AWS::ECR::Repository", "RepositoryName")
        return [*original(settings), dataclasses.replace(repository, made_by="bootstrap", stack=stack)]

    monkeypatch.setattr(cloudformation, "inventory", with_api_repository)
    with pytest.raises(cloudformation.ExportError, match="ApiRepository"):
        cloudformation.template(settings_for())

    def without_queue(settings: Settings) -> list[ownership.Resource]:
        return [r for r in original(settings) if r.kind != "queue"]

    monkeypatch.setattr(cloudformation, "inventory", without_queue)
    with pytest.raises(cloudformation.ExportError, match=cloudformation.FAILURE_QUEUE):
        cloudformation.template(settings_for())


def test_a_setting_the_template_cannot_map_fails_the_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """One source of truth: a property bootstrap starts to set that the template does not know is an error, not a
    property silently missing from the template."""
    original = batch_spec.function_configuration
    monkeypatch.setattr(
        batch_spec, "function_configuration", lambda *args: {**original(*args), "Architectures": ["arm64"]}
    )
    with pytest.raises(cloudformation.ExportError, match="Architectures"):
        cloudformation.template(settings_for())


def test_cli_writes_the_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    with isolated_environment(LAB_PREFIX="acme-ml"):
        runner = CliRunner()
        printed = runner.invoke(app, ["export", "cloudformation"])
        assert printed.exit_code == 0, printed.output
        assert json.loads(printed.stdout) == cloudformation.template(settings_for(prefix="acme-ml"))
        written = runner.invoke(app, ["export", "cloudformation", "--output", "stack.yaml", "--code", "function.zip"])
        assert written.exit_code == 0, written.output
        assert yaml.safe_load((tmp_path / "stack.yaml").read_text()) == json.loads(printed.stdout)
        assert (tmp_path / "function.zip").read_bytes() == batch_spec.function_package()
        assert "aws cloudformation deploy --template-file stack.yaml" in written.stdout


# -- deployed on the emulator ------------------------------------------------------------------------------------


def aws_cli(*args: str, timeout: float = 300) -> str:
    """Run the AWS CLI against what os.environ points at (the session's emulator); its stdout."""
    assert AWS_CLI.exists(), f"{AWS_CLI} is missing: `make install` installs the test extras (awscli)"
    done = subprocess.run([str(AWS_CLI), *args], capture_output=True, text=True, timeout=timeout, env=os.environ)
    assert done.returncode == 0, f"aws {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def stack_view(aws: Any, document: dict[str, Any], stack_resources: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """The stack's resources as bootstrap's changes name them: (kind, name), read back from what exists."""
    physical = {item["LogicalResourceId"]: item["PhysicalResourceId"] for item in stack_resources}
    view = set()
    for item in stack_resources:
        kind, name, logical_id = item["ResourceType"], item["PhysicalResourceId"], item["LogicalResourceId"]
        properties = document["Resources"][logical_id]["Properties"]
        if kind == "AWS::S3::Bucket":
            view.add(("bucket", name))
            notification = aws.client("s3").get_bucket_notification_configuration(Bucket=name)
            if notification.get("LambdaFunctionConfigurations"):
                view.add(("notification", name))
        elif kind == "AWS::SQS::Queue":
            view.add(("queue", name.rsplit("/", 1)[-1]))
        elif kind == "AWS::IAM::Role":
            view.add(("role", name))
            for policy in aws.client("iam").list_role_policies(RoleName=name)["PolicyNames"]:
                view.add(("role policy", f"{name}/{policy}"))
        elif kind == "AWS::Lambda::LayerVersion":
            view.add(("layer", name.split(":")[6]))
        elif kind == "AWS::Lambda::Function":
            view.add(("function", name))
        elif kind == "AWS::Logs::LogGroup":
            view.add(("log group", name))
        elif kind == "AWS::Lambda::EventInvokeConfig":
            function = physical[properties["FunctionName"]["Ref"]]
            aws.client("lambda").get_function_event_invoke_config(
                FunctionName=function, Qualifier=properties["Qualifier"]
            )
            view.add(("async invocation", function))
        elif kind == "AWS::Lambda::Permission":
            view.add(("invoke permission", name))
        else:
            raise AssertionError(f"bootstrap creates nothing like {kind} {logical_id}")
    return view


def empty_bucket(bucket: str) -> None:
    aws_cli("s3", "rm", f"s3://{bucket}", "--recursive", "--only-show-errors")


def gone(call: Any) -> bool:
    try:
        call()
    except ClientError as error:
        return is_not_found(error)
    return False


def test_template_deploys_scores_a_csv_and_deletes_cleanly(
    lab_stack: Lab, trained_model_path: Path, sample_csv: Path, tmp_path: Path
) -> None:
    """`aws cloudformation deploy` of the exported template on the emulator: the stack is what bootstrap would build
    (bootstrap's own dry run over it finds nothing to change but the two ids CloudFormation generates), a CSV gets
    its predictions through it, and deleting the stack leaves nothing (bootstrap's teardown finds nothing)."""
    # No retry: an event the function fails on reaches the failure queue after one attempt (checked below).
    settings = lab_stack.settings.model_copy(update={"prefix": "lab-cfn", "lambda_retry_attempts": 0})
    aws, stack = lab_stack.aws, "lab-cfn"
    s3, lam, iam, sqs = (aws.client(name) for name in ("s3", "lambda", "iam", "sqs"))
    artifacts = f"{settings.prefix}-artifacts"
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        layer = bootstrap.build_lambda_layer(settings, aws)  # the session's build, cached
        package = batch_spec.function_package()
        s3.create_bucket(Bucket=artifacts)
        layer_key, function_key = f"layers/{layer.sha256}.zip", f"functions/{batch_spec.code_sha256(package)}.zip"
        s3.upload_file(str(layer.path), artifacts, layer_key)
        s3.put_object(Bucket=artifacts, Key=function_key, Body=package)
        document = cloudformation.template(settings)
        template_file = tmp_path / "stack.yaml"
        template_file.write_text(cloudformation.render(document, "yaml"))
        timings["upload"] = time.perf_counter() - started

        started = time.perf_counter()
        aws_cli(
            "cloudformation", "deploy", "--stack-name", stack, "--template-file", str(template_file),
            "--capabilities", "CAPABILITY_NAMED_IAM", "--parameter-overrides", f"ArtifactBucket={artifacts}",
            f"LayerKey={layer_key}", f"FunctionKey={function_key}", f"LayerDescription={layer.description}",
        )  # fmt: skip
        timings["deploy"] = time.perf_counter() - started
        cfn = aws.client("cloudformation")
        assert cfn.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
        resources = cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]
        assert {item["LogicalResourceId"] for item in resources} == set(document["Resources"])
        assert {item["ResourceStatus"] for item in resources} == {"CREATE_COMPLETE"}

        # What bootstrap would do over the stack's resources: the same kinds and names, nothing to change but the
        # permission's statement id and the notification's rule id, which CloudFormation cannot set.
        changes = bootstrap.bootstrap(settings, aws, layer, dry_run=True)
        statement_id = batch_spec.invoke_permission_statement_id(settings)
        expected = {(c.kind, c.name) for c in changes} - {("invoke permission", statement_id)}
        (permission_id,) = [
            i["PhysicalResourceId"] for i in resources if i["ResourceType"] == "AWS::Lambda::Permission"
        ]
        assert stack_view(aws, document, resources) - {("invoke permission", permission_id)} == expected
        assert {(c.kind, c.action, c.detail) for c in changes if c.action != "unchanged"} == {
            ("invoke permission", "created", f"s3.amazonaws.com from arn:aws:s3:::{settings.input_bucket}"),
            ("notification", "updated", "ObjectCreated *.csv -> function"),
            # The emulator's qualifier gap (docstring); compared just below.
            (
                "async invocation",
                "created",
                f"{settings.lambda_retry_attempts} retries, then {settings.failure_queue_name}",
            ),
            # The emulator's CloudFormation drops bucket tags (docstring): without the lab's tag, bootstrap would not
            # take the stack's buckets over (mlops_lab.ownership) unless told to (--adopt).
            ("bucket", "not ours", f"no {PREFIX_TAG} tag: bootstrap refuses it without --adopt"),
        }, changes
        queue_arn = sqs.get_queue_attributes(
            QueueUrl=sqs.get_queue_url(QueueName=settings.failure_queue_name)["QueueUrl"], AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        async_config = lam.get_function_event_invoke_config(FunctionName=settings.function_name, Qualifier="$LATEST")
        wanted_async = batch_spec.async_invocation(settings, queue_arn)
        assert {key: async_config[key] for key in wanted_async} == wanted_async
        # Which the emulator's CloudFormation would not refuse by itself: a layer or code object it could not read.
        function = lam.get_function(FunctionName=settings.function_name)["Configuration"]
        assert function["CodeSha256"] == batch_spec.code_sha256(package)
        layer_version = lam.list_layer_versions(LayerName=settings.layer_name)["LayerVersions"][0]
        assert lam.get_layer_version_by_arn(Arn=layer_version["LayerVersionArn"])["Content"]["CodeSize"] == (
            layer.zipped_bytes
        )
        # The two ids aside, bootstrap's permission and notification are the stack's.
        bootstrap.ensure_invoke_permission(settings, aws, function["FunctionArn"])
        statements = {
            s["Sid"]: s for s in json.loads(lam.get_policy(FunctionName=settings.function_name)["Policy"])["Statement"]
        }
        assert {**statements.pop(statement_id), "Sid": ""} == {**statements.pop(permission_id), "Sid": ""}
        notification = s3.get_bucket_notification_configuration(Bucket=settings.input_bucket)
        wanted = batch_spec.notification_configuration(function["FunctionArn"])["LambdaFunctionConfigurations"]
        assert [{**rule, "Id": ""} for rule in notification["LambdaFunctionConfigurations"]] == [
            {**rule, "Id": ""} for rule in wanted
        ]
        # Tags, where the emulator keeps them (not on buckets: see the module's docstring).
        tag = {"Key": PREFIX_TAG, "Value": settings.prefix}
        queue_url = sqs.get_queue_url(QueueName=settings.failure_queue_name)["QueueUrl"]
        assert sqs.list_queue_tags(QueueUrl=queue_url)["Tags"][tag["Key"]] == tag["Value"]
        assert tag in iam.list_role_tags(RoleName=settings.role_name)["Tags"]
        assert lam.list_tags(Resource=function["FunctionArn"])["Tags"][tag["Key"]] == tag["Value"]

        # The stack scores a CSV.
        started = time.perf_counter()
        model.publish(settings, aws, trained_model_path.read_bytes())
        result = jobs.predict_file(settings, aws, sample_csv, out_dir=tmp_path, timeout=120)
        assert result.status == "ok", result.error
        assert result.rows == len(parse_csv(sample_csv)) - 1
        # A failing event (no model to read) lands in the stack's failure queue: the async configuration works.
        # Without the stack's configuration there would be no failure record at all (no destination); with the
        # default two retries it would come after the emulator's 5 s + 10 s of backoff, not at once. (Its record
        # says 3 attempts whatever the setting: MiniStack writes approximateInvokeCount 3 into every one.)
        s3.delete_object(Bucket=settings.model_bucket, Key=settings.model_key)
        failing = time.perf_counter()
        with pytest.raises(jobs.PredictFailed) as failed:
            jobs.predict_file(settings, aws, sample_csv, key="no-model.csv", out_dir=tmp_path, timeout=120)
        assert failed.value.failure.inputs == ((settings.input_bucket, "no-model.csv"),)
        assert time.perf_counter() - failing < 3 * settings.emulator_async_retry_base_s
        timings["predict"] = time.perf_counter() - started

        # Deleted (the buckets emptied first, as AWS requires), nothing is left.
        started = time.perf_counter()
        for bucket in settings.buckets:
            empty_bucket(bucket)
        aws_cli("cloudformation", "delete-stack", "--stack-name", stack)
        aws_cli("cloudformation", "wait", "stack-delete-complete", "--stack-name", stack)
        timings["delete"] = time.perf_counter() - started
        for bucket in settings.buckets:
            assert gone(lambda bucket=bucket: s3.head_bucket(Bucket=bucket)), bucket
        assert gone(lambda: lam.get_function(FunctionName=settings.function_name))
        assert lam.list_layer_versions(LayerName=settings.layer_name)["LayerVersions"] == []
        assert gone(lambda: iam.get_role(RoleName=settings.role_name))
        assert gone(lambda: sqs.get_queue_url(QueueName=settings.failure_queue_name))
        # (The session's stack runs no tracking server: the registry is "not checked", no resource.)
        after = teardown(settings, aws)
        leftovers = [change for change in after.changes if change.action != "absent" and change.kind != "registry"]
        assert leftovers == [] and after.complete, (leftovers, after.left, after.unchecked)
    finally:
        with contextlib.suppress(ClientError):
            aws.client("cloudformation").delete_stack(StackName=stack)
        teardown(settings, aws)
        if not gone(lambda: s3.head_bucket(Bucket=artifacts)):
            for item in s3.list_objects_v2(Bucket=artifacts).get("Contents", []):
                s3.delete_object(Bucket=artifacts, Key=item["Key"])
            s3.delete_bucket(Bucket=artifacts)
    report("CloudFormation on the emulator: " + ", ".join(f"{step} {s:.1f} s" for step, s in timings.items()))
