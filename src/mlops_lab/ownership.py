"""What the lab owns in AWS, one inventory: every resource a prefix's lab makes, and how to tell it is the lab's.

A resource is this lab's when it carries the tag ``mlops-lab:prefix=<prefix>`` (``settings.PREFIX_TAG``); a Lambda
layer, which cannot be tagged, when its version was published by the lab (its description says so). Names alone prove
nothing: on AWS a bucket, a role or a repository of the same name may be someone else's. So bootstrap refuses to take
over a resource that exists without this lab's tag unless told to (``--adopt``), and teardown deletes only what is the
lab's and says what it kept.

The inventory is in teardown's order (dependants first); bootstrap creates in its own order, from the same names.
Each resource bootstrap makes also says how a CloudFormation stack declares it (``StackEntry``): the export builds its
template from those entries, so the template cannot name a resource the lab would not own, or miss one it would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from mlops_lab.aws import Aws, bucket_tags, error_code, is_not_found, tag_dict
from mlops_lab.errors import ExitCode, LabError
from mlops_lab.layer import DESCRIPTION_MARK
from mlops_lab.settings import PREFIX_TAG, Settings

Tags = dict[str, str]


class NotOurs(LabError):
    """Resources of the lab's names that are not the lab's (no ``mlops-lab:prefix`` tag of this prefix)."""

    exit_code = ExitCode.CONFLICT


# The logical ids of the resources a stack of the lab holds (`mlops-lab export cloudformation`).
INPUT_BUCKET, OUTPUT_BUCKET, MODEL_BUCKET = "InputBucket", "OutputBucket", "ModelBucket"
FAILURE_QUEUE = "FailureQueue"
ROLE = "ExecutionRole"
FUNCTION = "Function"
LOG_GROUP = "FunctionLogGroup"


@dataclass(frozen=True)
class StackEntry:
    """How a CloudFormation stack declares a resource: its logical id, its type, and the property its name goes in."""

    logical_id: str
    type: str
    name_property: str


@dataclass(frozen=True)
class Resource:
    """One resource of the inventory: its kind and name, and how to read its tags (None: it does not exist)."""

    kind: str
    name: str
    read_tags: Callable[[Aws], Tags | None]
    made_by: str  # the command that makes it
    # None: the lab's stack does not hold it (another command makes it, or CloudFormation could not name it so).
    stack: StackEntry | None = None


@dataclass(frozen=True)
class Stranger:
    """A resource of the lab's name that is not this lab's, and whose it is as far as its tags say."""

    resource: Resource
    why: str

    def __str__(self) -> str:
        return f"{self.resource.kind} {self.resource.name} ({self.why})"


def inventory(settings: Settings) -> list[Resource]:
    """Every taggable resource a lab of ``settings.prefix`` makes, dependants first."""
    return [
        Resource(
            "function",
            settings.function_name,
            lambda aws: _function_tags(aws, settings.function_name),
            "bootstrap",
            StackEntry(FUNCTION, "AWS::Lambda::Function", "FunctionName"),
        ),
        Resource(
            "log group",
            settings.log_group,
            lambda aws: _log_group_tags(aws, settings.log_group),
            "bootstrap",
            StackEntry(LOG_GROUP, "AWS::Logs::LogGroup", "LogGroupName"),
        ),
        Resource(
            "queue",
            settings.failure_queue_name,
            lambda aws: _queue_tags(aws, settings.failure_queue_name),
            "bootstrap",
            StackEntry(FAILURE_QUEUE, "AWS::SQS::Queue", "QueueName"),
        ),
        *(
            Resource("role", role, lambda aws, role=role: _role_tags(aws, role), made_by, stack)
            for role, made_by, stack in (
                (settings.role_name, "bootstrap", StackEntry(ROLE, "AWS::IAM::Role", "RoleName")),
                (settings.sagemaker_role_name, "deploy sagemaker", None),
            )
        ),
        *(
            Resource("ecr repository", name, lambda aws, name=name: _repository_tags(aws, name), made_by)
            for name, made_by in (
                (settings.api_repository, "image push"),
                (settings.sagemaker_repository, "deploy sagemaker"),
            )
        ),
        *(
            Resource(
                "bucket",
                bucket,
                lambda aws, bucket=bucket: _bucket_tags(aws, bucket),
                "bootstrap",
                StackEntry(logical_id, "AWS::S3::Bucket", "BucketName"),
            )
            # strict: a bucket added to the settings needs its logical id here before anything runs
            for bucket, logical_id in zip(settings.buckets, (INPUT_BUCKET, OUTPUT_BUCKET, MODEL_BUCKET), strict=True)
        ),
    ]


def names(settings: Settings, kind: str) -> tuple[str, ...]:
    """The names of the inventory's resources of ``kind`` (``"role"``, ``"ecr repository"``...), in its order."""
    found = tuple(resource.name for resource in inventory(settings) if resource.kind == kind)
    if not found:  # a kind misspelt would otherwise look for nothing, and find nothing left
        raise LabError(f"the inventory has no resource of kind {kind!r}", ExitCode.UNEXPECTED)
    return found


def is_ours(tags: Tags, settings: Settings) -> bool:
    return tags.get(PREFIX_TAG) == settings.prefix


def whose(tags: Tags) -> str:
    owner = tags.get(PREFIX_TAG)
    return f"tagged {PREFIX_TAG}={owner}: another lab's" if owner else f"no {PREFIX_TAG} tag"


def strangers(settings: Settings, aws: Aws, *, made_by: str | None = None) -> list[Stranger]:
    """The resources of the lab's names (those ``made_by`` that command, or all) that exist and are not this lab's."""
    found = []
    for resource in inventory(settings):
        if made_by is not None and resource.made_by != made_by:
            continue
        tags = resource.read_tags(aws)
        if tags is not None and not is_ours(tags, settings):
            found.append(Stranger(resource, whose(tags)))
    return found


def refuse(settings: Settings, found: list[Stranger], *, made_by: str) -> None:
    """NotOurs naming every resource of ``found`` (what ``made_by`` would take over that is not this lab's)."""
    if found:
        raise NotOurs(
            f"{len(found)} resource(s) of this lab's names exist but are not its own: {'; '.join(map(str, found))}. "
            f"Choose another prefix (LAB_PREFIX), or take them over with `mlops-lab {made_by} --adopt` (it adds the "
            f"tag {PREFIX_TAG}={settings.prefix}; teardown then deletes them)."
        )


def layer_version_is_ours(version: dict[str, Any]) -> bool:
    """Layers cannot be tagged: a version the lab published says so in its description."""
    return str(version.get("Description", "")).startswith(DESCRIPTION_MARK)


# -- reading tags, per service (None: no such resource) --------------------------------------------------------------


def _absent_on(error: ClientError, *codes: str) -> bool:
    return is_not_found(error) or error_code(error) in codes


def _bucket_tags(aws: Aws, bucket: str) -> Tags | None:
    s3 = aws.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as error:
        if error_code(error) in {"403", "AccessDenied", "Forbidden"}:
            return {}  # it exists, and these credentials may not even look: another account's
        if _absent_on(error, "404", "NotFound"):
            return None
        raise
    return bucket_tags(s3, bucket)


def _queue_tags(aws: Aws, name: str) -> Tags | None:
    sqs = aws.client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as error:
        if _absent_on(error):
            return None
        raise
    return dict(sqs.list_queue_tags(QueueUrl=url).get("Tags", {}))


def _role_tags(aws: Aws, name: str) -> Tags | None:
    iam = aws.client("iam")
    try:
        return tag_dict(iam.list_role_tags(RoleName=name).get("Tags"))
    except ClientError as error:
        if _absent_on(error):
            return None
        raise


def _log_group_tags(aws: Aws, name: str) -> Tags | None:
    logs = aws.client("logs")
    groups = [g for g in logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"] if g["logGroupName"] == name]
    if not groups:
        return None
    arn = groups[0].get("logGroupArn") or groups[0]["arn"].removesuffix(":*")
    return dict(logs.list_tags_for_resource(resourceArn=arn).get("tags", {}))


def _function_tags(aws: Aws, name: str) -> Tags | None:
    lam = aws.client("lambda")
    try:
        arn = lam.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    except ClientError as error:
        if _absent_on(error):
            return None
        raise
    return dict(lam.list_tags(Resource=arn).get("Tags", {}))


def _repository_tags(aws: Aws, name: str) -> Tags | None:
    ecr = aws.client("ecr")
    try:
        arn = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryArn"]
    except ClientError as error:
        if _absent_on(error, "RepositoryNotFoundException"):
            return None
        raise
    return tag_dict(ecr.list_tags_for_resource(resourceArn=arn).get("tags"))
