"""Create (idempotently) everything the batch-prediction path needs.

Buckets -> failure queue -> execution role + least-privilege policy -> layer -> log group -> function -> its
asynchronous invocation (retries, then the failure queue) -> S3 invoke permission -> notification.
Each step compares what exists with what is wanted (tags included: ``Settings.resource_tags``) and changes only the
difference, so a second run reports "unchanged" everywhere. Works the same against the emulator and real AWS.
What is wanted (policies, the function's package and configuration, ...) is ``mlops_lab.batch_spec``; deleting it
all is ``mlops_lab.teardown``.

Why this is one module of some 450 lines: the steps are one ordered recipe, each passing the ARNs it made to the next
(queue -> async invocation, role -> function -> permission -> notification), and the layer it publishes is built for
where that recipe runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from mlops_lab import emulator, ownership
from mlops_lab.aws import Aws, Change, bucket_tags, error_code, is_not_found, missing_tags, tag_list, updated
from mlops_lab.aws import ensure_role as ensure_iam_role
from mlops_lab.batch_spec import (
    FAILURE_RETENTION_S,
    FUNCTION_DESCRIPTION,
    INLINE_POLICY_NAME,
    INVOKE_ACTION,
    INVOKE_PRINCIPAL,
    ROLE_DESCRIPTION,
    async_invocation,
    code_sha256,
    execution_policy,
    function_configuration,
    function_package,
    invoke_permission_statement_id,
    layer_runtimes,
    notification_configuration,
    trust_policy,
)
from mlops_lab.errors import LabError
from mlops_lab.layer import LayerArtifact, build_layer, check_limits, interpreter_target
from mlops_lab.settings import Settings


class BootstrapError(LabError):
    """A resource bootstrap cannot make usable (the message names it)."""


# -- bootstrap ----------------------------------------------------------------------------------------------------


def bootstrap(
    settings: Settings,
    aws: Aws,
    layer: LayerArtifact,
    *,
    on_change: Callable[[Change], None] = lambda _: None,
    dry_run: bool = False,
    adopt: bool = False,
) -> list[Change]:
    """Create or repair every resource; with ``dry_run``, only read what exists and say what would change (the same
    comparisons, no write: `mlops-lab plan`). A resource of the lab's names that exists without this lab's tag is
    not taken over (ownership.NotOurs, before any write; a dry run lists it as "not ours") unless ``adopt``."""
    changes: list[Change] = []
    refused: set[tuple[str, str]] = set()  # a dry run's "not ours": what bootstrap would do to them does not apply

    def record(change: Change) -> None:
        if (change.kind, change.name) in refused:
            return
        changes.append(change)
        on_change(change)

    if not adopt:
        found = ownership.strangers(settings, aws, made_by="bootstrap")  # each resource's tags read once
        if not dry_run:
            ownership.refuse(settings, found, made_by="bootstrap")
        for stranger in found:
            kind, name = stranger.resource.kind, stranger.resource.name
            record(Change(kind, name, "not ours", f"{stranger.why}: bootstrap refuses it without --adopt"))
            refused.add((kind, name))

    for bucket in settings.buckets:
        record(ensure_bucket(aws, bucket, settings.resource_tags, dry_run=dry_run))
    queue_arn, queue_change = ensure_failure_queue(settings, aws, dry_run=dry_run)
    record(queue_change)
    role_arn, role_changes = ensure_role(settings, aws, dry_run=dry_run)
    for change in role_changes:
        record(change)
    record(ensure_log_group(settings, aws, dry_run=dry_run))
    if settings.lambda_bundle_layer:
        package = function_package(layer)
        function_arn, function_change = ensure_function(settings, aws, role_arn, None, package, dry_run=dry_run)
    else:
        layer_arn, layer_change = ensure_layer(settings, aws, layer, dry_run=dry_run)
        record(layer_change)
        package = function_package()
        function_arn, function_change = ensure_function(settings, aws, role_arn, layer_arn, package, dry_run=dry_run)
    record(function_change)
    record(ensure_async_invocation(settings, aws, queue_arn, dry_run=dry_run))
    record(ensure_invoke_permission(settings, aws, function_arn, dry_run=dry_run))
    record(ensure_notification(settings, aws, function_arn, dry_run=dry_run))
    return changes


def _arn(aws: Aws, service: str, resource: str, *, region: bool = True) -> str:
    """The ARN a resource that does not exist yet will have (a dry run compares against it)."""
    return f"arn:{aws.partition}:{service}:{aws.region if region else ''}:{aws.account_id}:{resource}"


def ensure_bucket(aws: Aws, bucket: str, tags: dict[str, str], *, dry_run: bool = False) -> Change:
    s3 = aws.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as error:
        if error_code(error) not in {"404", "NoSuchBucket", "NotFound"}:
            raise BootstrapError(f"bucket {bucket} exists but is not usable: {error}") from error
    else:
        current = bucket_tags(s3, bucket)
        if not missing_tags(current, tags):
            return Change("bucket", bucket, "unchanged")
        if not dry_run:  # S3 replaces the whole tag set: keep the tags others put there
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tag_list({**current, **tags})})
        return Change("bucket", bucket, "updated", "tags")
    if dry_run:
        return Change("bucket", bucket, "created")
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if aws.region != "us-east-1":  # us-east-1 refuses an explicit LocationConstraint; every other region needs one
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
    s3.create_bucket(**kwargs)
    s3.get_waiter("bucket_exists").wait(Bucket=bucket, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tag_list(tags)})
    return Change("bucket", bucket, "created")


def ensure_failure_queue(settings: Settings, aws: Aws, *, dry_run: bool = False) -> tuple[str, Change]:
    """The SQS queue the function's failed events go to; its ARN."""
    sqs, tags = aws.client("sqs"), settings.resource_tags
    name, wanted = settings.failure_queue_name, {"MessageRetentionPeriod": str(FAILURE_RETENTION_S)}
    purpose = "failed events, kept 14 days"
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        change = Change("queue", name, "unchanged", purpose)
    except ClientError as error:
        if not is_not_found(error):
            raise
        if dry_run:
            return _arn(aws, "sqs", name), Change("queue", name, "created", purpose)
        url = sqs.create_queue(QueueName=name, Attributes=wanted, tags=tags)["QueueUrl"]
        change = Change("queue", name, "created", purpose)
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn", *wanted])["Attributes"]
    if any(attributes.get(key) != value for key, value in wanted.items()):
        if not dry_run:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=wanted)
        change = updated(change, "retention")
    if missing := missing_tags(sqs.list_queue_tags(QueueUrl=url).get("Tags", {}), tags):
        if not dry_run:
            sqs.tag_queue(QueueUrl=url, Tags=missing)
        change = updated(change, "tags")
    return attributes["QueueArn"], change


def ensure_async_invocation(settings: Settings, aws: Aws, queue_arn: str, *, dry_run: bool = False) -> Change:
    """The function's asynchronous-invocation settings: retries, maximum event age, on-failure destination."""
    lam = aws.client("lambda")
    wanted = async_invocation(settings, queue_arn)
    try:
        current = lam.get_function_event_invoke_config(FunctionName=settings.function_name)
        action = "updated"
    except ClientError as error:
        if not is_not_found(error):
            raise
        current, action = {}, "created"
    current_failure = current.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
    if (
        current.get("MaximumRetryAttempts") == wanted["MaximumRetryAttempts"]
        and current.get("MaximumEventAgeInSeconds") == wanted["MaximumEventAgeInSeconds"]
        and current_failure == queue_arn
    ):
        return Change("async invocation", settings.function_name, "unchanged")
    # Put, not Update: Put replaces the whole configuration (and MiniStack has no Update). On AWS the role must already
    # allow sqs:SendMessage on the queue, which can take seconds to propagate after the policy changes.
    if not dry_run:
        _retry_role_propagation(
            lambda: lam.put_function_event_invoke_config(FunctionName=settings.function_name, **wanted)
        )
    return Change(
        "async invocation",
        settings.function_name,
        action,
        f"{settings.lambda_retry_attempts} retries, then {settings.failure_queue_name}",
    )


def ensure_role(settings: Settings, aws: Aws, *, dry_run: bool = False) -> tuple[str, list[Change]]:
    """The function's execution role and its least-privilege inline policy."""
    return ensure_iam_role(
        aws,
        settings.role_name,
        trust=trust_policy(),
        policy_name=INLINE_POLICY_NAME,
        policy=execution_policy(settings, aws),
        description=ROLE_DESCRIPTION,
        tags=settings.resource_tags,
        dry_run=dry_run,
    )


def ensure_log_group(settings: Settings, aws: Aws, *, dry_run: bool = False) -> Change:
    """The function's log group, made before Lambda would make it (untagged, kept forever): retention and tags."""
    logs, name, tags = aws.client("logs"), settings.log_group, settings.resource_tags
    detail = f"kept {settings.log_retention_days} days"
    found = logs.describe_log_groups(logGroupNamePrefix=name).get("logGroups", [])
    group = next((g for g in found if g["logGroupName"] == name), None)
    if group is None:
        if dry_run:
            return Change("log group", name, "created", detail)
        logs.create_log_group(logGroupName=name, tags=tags)
        logs.put_retention_policy(logGroupName=name, retentionInDays=settings.log_retention_days)
        return Change("log group", name, "created", detail)
    change = Change("log group", name, "unchanged")
    if group.get("retentionInDays") != settings.log_retention_days:
        if not dry_run:
            logs.put_retention_policy(logGroupName=name, retentionInDays=settings.log_retention_days)
        change = updated(change, "retention")
    arn = group.get("logGroupArn") or group["arn"].removesuffix(":*")
    if missing := missing_tags(logs.list_tags_for_resource(resourceArn=arn).get("tags", {}), tags):
        if not dry_run:
            logs.tag_resource(resourceArn=arn, tags=missing)
        change = updated(change, "tags")
    return change


def ensure_layer(settings: Settings, aws: Aws, layer: LayerArtifact, *, dry_run: bool = False) -> tuple[str, Change]:
    lam = aws.client("lambda")
    versions = lam.list_layer_versions(LayerName=settings.layer_name).get("LayerVersions", [])
    for version in versions:  # newest first
        if version.get("Description") == layer.description:
            return version["LayerVersionArn"], Change(
                "layer", settings.layer_name, "unchanged", f"version {version['Version']}"
            )
    if dry_run:
        upcoming = f"layer:{settings.layer_name}:{versions[0]['Version'] + 1 if versions else 1}"
        return _arn(aws, "lambda", upcoming), Change(
            "layer", settings.layer_name, "published", f"a new version, {layer.zipped_bytes / 1e6:.1f} MB zipped"
        )
    # Through S3, not inline: AWS caps direct uploads at 50 MB and the layer is close to that.
    key = f"layers/{settings.layer_name}/{layer.sha256}.zip"
    aws.client("s3").upload_file(str(layer.path), settings.model_bucket, key)
    published = lam.publish_layer_version(
        LayerName=settings.layer_name,
        Description=layer.description,
        Content={"S3Bucket": settings.model_bucket, "S3Key": key},
        CompatibleRuntimes=layer_runtimes(settings),
    )
    if not published["Content"].get("CodeSize"):
        raise BootstrapError(f"layer publish from s3://{settings.model_bucket}/{key} produced an empty layer")
    return published["LayerVersionArn"], Change(
        "layer",
        settings.layer_name,
        "published",
        f"version {published['Version']}, {layer.zipped_bytes / 1e6:.1f} MB zipped",
    )


# Larger code zips go through S3 (AWS caps a direct upload at 50 MB, and a request that size is slow anyway).
INLINE_CODE_BYTES = 10 * 1000 * 1000


def ensure_function(
    settings: Settings,
    aws: Aws,
    role_arn: str,
    layer_arn: str | None,
    package: bytes,
    *,
    dry_run: bool = False,
) -> tuple[str, Change]:
    lam = aws.client("lambda")
    if len(package) <= INLINE_CODE_BYTES:
        code: dict[str, Any] = {"ZipFile": package}
    else:
        key = f"functions/{settings.function_name}/{hashlib.sha256(package).hexdigest()}.zip"
        code = {"S3Bucket": settings.model_bucket, "S3Key": key}
    wanted = function_configuration(settings, role_arn, layer_arn)
    try:
        function = lam.get_function(FunctionName=settings.function_name)
    except ClientError as error:
        if not is_not_found(error):
            raise
        if dry_run:
            return _arn(aws, "lambda", f"function:{settings.function_name}"), Change(
                "function", settings.function_name, "created"
            )
        _upload_code(aws, code, package)
        created = _retry_role_propagation(
            lambda: lam.create_function(
                FunctionName=settings.function_name,
                Code=code,
                Description=FUNCTION_DESCRIPTION,
                Tags=settings.resource_tags,
                **wanted,
            )
        )
        lam.get_waiter("function_active_v2").wait(FunctionName=settings.function_name)
        return created["FunctionArn"], Change("function", settings.function_name, "created")
    current, function_arn = function["Configuration"], function["Configuration"]["FunctionArn"]
    changed = []
    if current.get("CodeSha256") != code_sha256(package):
        if not dry_run:
            _upload_code(aws, code, package)
            lam.update_function_code(FunctionName=settings.function_name, **code)
            lam.get_waiter("function_updated_v2").wait(FunctionName=settings.function_name)
        changed.append("code")
    differing = [key for key, value in wanted.items() if _current_setting(current, key) != value]
    if differing and not dry_run:
        _retry_role_propagation(
            lambda: lam.update_function_configuration(FunctionName=settings.function_name, **wanted)
        )
        lam.get_waiter("function_updated_v2").wait(FunctionName=settings.function_name)
    changed += [key.lower() for key in differing]
    if missing := missing_tags(function.get("Tags", {}), settings.resource_tags):
        if not dry_run:
            lam.tag_resource(Resource=function_arn, Tags=missing)
        changed.append("tags")
    if changed:
        return function_arn, Change("function", settings.function_name, "updated", ", ".join(changed))
    return function_arn, Change("function", settings.function_name, "unchanged")


def _upload_code(aws: Aws, code: dict[str, Any], package: bytes) -> None:
    if "S3Key" in code:
        aws.client("s3").upload_fileobj(io.BytesIO(package), code["S3Bucket"], code["S3Key"])


def _current_setting(configuration: dict[str, Any], key: str) -> Any:
    if key == "Layers":
        return [layer["Arn"] for layer in configuration.get("Layers", [])]
    if key == "Environment":
        return {"Variables": configuration.get("Environment", {}).get("Variables", {})}
    return configuration.get(key)


def _retry_role_propagation(call: Callable[[], Any], timeout: float = 60) -> Any:
    """A new IAM role takes seconds to become assumable by Lambda on AWS; retry that one error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ClientError as error:
            retryable = error_code(error) == "InvalidParameterValueException" and "role" in str(error).lower()
            if not retryable or time.monotonic() > deadline:
                raise
            time.sleep(2)


def ensure_invoke_permission(settings: Settings, aws: Aws, function_arn: str, *, dry_run: bool = False) -> Change:
    lam = aws.client("lambda")
    statement_id = invoke_permission_statement_id(settings)
    source_arn = f"arn:{aws.partition}:s3:::{settings.input_bucket}"
    try:
        policy = json.loads(lam.get_policy(FunctionName=settings.function_name)["Policy"])
    except ClientError as error:
        if not is_not_found(error):
            raise
        policy = {"Statement": []}
    existing = next((s for s in policy.get("Statement", []) if s.get("Sid") == statement_id), None)
    if existing is not None:
        condition = existing.get("Condition", {})
        if (
            condition.get("ArnLike", {}).get("AWS:SourceArn") == source_arn
            and condition.get("StringEquals", {}).get("AWS:SourceAccount") == aws.account_id
        ):
            return Change("invoke permission", statement_id, "unchanged")
    action = "updated" if existing else "created"
    if dry_run:
        return Change("invoke permission", statement_id, action, f"s3.amazonaws.com from {source_arn}")
    if existing is not None:
        lam.remove_permission(FunctionName=settings.function_name, StatementId=statement_id)
    lam.add_permission(
        FunctionName=settings.function_name,
        StatementId=statement_id,
        Action=INVOKE_ACTION,
        Principal=INVOKE_PRINCIPAL,
        SourceArn=source_arn,
        SourceAccount=aws.account_id,
    )
    return Change("invoke permission", statement_id, action, f"s3.amazonaws.com from {source_arn}")


def ensure_notification(settings: Settings, aws: Aws, function_arn: str, *, dry_run: bool = False) -> Change:
    s3 = aws.client("s3")
    wanted = notification_configuration(function_arn)
    try:
        current = s3.get_bucket_notification_configuration(Bucket=settings.input_bucket)
    except ClientError as error:
        if not (dry_run and is_not_found(error)):  # a dry run's bucket may not exist yet
            raise
        current = {}
    current.pop("ResponseMetadata", None)
    current.pop("EventBridgeConfiguration", None)
    if current == wanted:
        return Change("notification", settings.input_bucket, "unchanged")
    if dry_run:
        return Change(
            "notification",
            settings.input_bucket,
            "updated" if current else "created",
            "ObjectCreated *.csv -> function",
        )
    s3.put_bucket_notification_configuration(Bucket=settings.input_bucket, NotificationConfiguration=wanted)
    return Change(
        "notification", settings.input_bucket, "updated" if current else "created", "ObjectCreated *.csv -> function"
    )


# -- the layer it publishes ---------------------------------------------------------------------------------------


def layer_target(settings: Settings, aws: Aws) -> tuple[str, str, bool, str | None]:
    """(python, platform, compress, bytecode_for) of the layer bootstrap publishes: for the embedded emulator's own
    interpreter, stored and with its bytecode (fast cold starts); otherwise AWS's runtime, deflated, source only."""
    python = emulator.lambda_python(settings, aws)
    if python is not None:
        return (*interpreter_target(str(python)), False, str(python))
    return settings.layer_python, settings.layer_platform, True, None


def build_lambda_layer(
    settings: Settings, aws: Aws, python: str | None = None, platform: str | None = None
) -> LayerArtifact:
    """The layer for bootstrap's target; an explicit python/platform (`build-layer --python`) means a deflated zip
    for AWS or another emulator."""
    default_python, default_platform, compress, bytecode_for = layer_target(settings, aws)
    if python or platform:
        compress, bytecode_for = True, None
    artifact = build_layer(
        settings.build_dir,
        python=python or default_python,
        platform=platform or default_platform,
        compress=compress,
        bytecode_for=bytecode_for,
    )
    check_limits(artifact)
    return artifact


def run_bootstrap(
    settings: Settings, aws: Aws, on_change: Callable[[Change], None] = lambda _: None, *, adopt: bool = False
) -> list[Change]:
    """Bootstrap with the layer built for where ``aws`` points."""
    return bootstrap(settings, aws, build_lambda_layer(settings, aws), on_change=on_change, adopt=adopt)
