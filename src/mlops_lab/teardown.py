"""Delete everything the lab creates under a prefix, then check, service by service, that nothing is left.

What goes, in an order that never leaves something running that depends on what is already gone:
SageMaker (endpoint, its configs and models, their model data) -> the batch path (notification, asynchronous
invocation, function, layer) -> the log groups (the function's; on AWS the endpoint's too) -> the failure queue -> both
roles with their policies -> both ECR repositories with their images -> the registry's entries of this prefix
(registered models, experiments) -> the buckets with every object.

The registry's artifacts live in the model bucket (mlflow serves them from ``s3://<model bucket>/mlflow``), so the two
go together: the registered models and experiments tagged with this prefix are deleted too, or, with
``keep_registry``, the bucket keeps those artifacts (and only those) and the registry stays as it is.

Only what is the lab's goes (``mlops_lab.ownership``): a resource of the lab's name without its
``mlops-lab:prefix=<prefix>`` tag is kept and reported "not ours", and so are layer versions the lab did not publish.

The check afterwards looks for each resource by its name and, where the account has the Resource Groups Tagging API,
for anything else still tagged ``mlops-lab:prefix=<prefix>``. A service that cannot be reached is "not checked", never
"nothing left".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mlops_lab import ownership, registry, sagemaker, stack
from mlops_lab.aws import Aws, Change, error_code, is_not_found
from mlops_lab.settings import PREFIX_TAG, Settings


@dataclass(frozen=True)
class Check:
    """One service looked at after the deletions: what was looked for, and what is still there."""

    service: str
    looked_for: str
    left: tuple[str, ...] = ()
    checked: bool = True  # False: the service could not be asked (``note`` says why)
    note: str = ""


@dataclass
class Report:
    changes: list[Change] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # left on purpose (``keep_registry``)
    not_ours: set[tuple[str, str]] = field(default_factory=set)  # (kind, name) of the lab's names, not the lab's

    @property
    def left(self) -> list[str]:
        return [f"{check.service}: {name}" for check in self.checks for name in check.left]

    @property
    def unchecked(self) -> list[Check]:
        return [check for check in self.checks if not check.checked]

    @property
    def complete(self) -> bool:
        """Nothing left, and every service that can hold something of the lab's was asked."""
        return not self.left and not self.unchecked


def teardown(
    settings: Settings,
    aws: Aws,
    *,
    keep_registry: bool = False,
    on_change: Callable[[Change], None] = lambda _: None,
    on_check: Callable[[Check], None] = lambda _: None,
) -> Report:
    """Delete every resource of ``settings.prefix`` (see the module's docstring), then check that none is left."""
    report = Report()

    def record(change: Change) -> None:
        report.changes.append(change)
        on_change(change)

    def delete(kind: str, name: str, call: Callable[[], Any], *, done: str = "deleted", detail: str = "") -> None:
        try:
            call()
        except ClientError as error:
            if not is_not_found(error) and error_code(error) != "RepositoryNotFoundException":
                raise
            record(Change(kind, name, "absent"))
        else:
            record(Change(kind, name, done, detail))

    tags = {(r.kind, r.name): r.read_tags(aws) for r in ownership.inventory(settings)}  # None: not there

    def ours(kind: str, name: str) -> bool:
        """Is it the lab's (or not there, which its delete then reports)? Otherwise kept, and said so once."""
        found = tags[(kind, name)]
        if found is None or ownership.is_ours(found, settings):
            return True
        if (kind, name) not in report.not_ours:
            report.not_ours.add((kind, name))
            record(Change(kind, name, "not ours", f"{ownership.whose(found)}: kept"))
        return False

    sagemaker_url, sagemaker_absent = _sagemaker_api(settings, aws)
    if sagemaker_absent is None:
        try:
            sagemaker.delete_deployment(settings, aws, sagemaker_url=sagemaker_url, on_change=record)
        except sagemaker.SageMakerUnreachable as error:
            record(Change("SageMaker endpoint", settings.sagemaker_endpoint, "unchecked", str(error)))

    s3, lam, logs, sqs, ecr = (aws.client(name) for name in ("s3", "lambda", "logs", "sqs", "ecr"))
    if ours("bucket", settings.input_bucket):
        delete("notification", settings.input_bucket, lambda: _clear_notification(s3, settings.input_bucket))
    if ours("function", settings.function_name):
        delete(
            "async invocation",
            settings.function_name,
            lambda: lam.delete_function_event_invoke_config(FunctionName=settings.function_name),
        )
        delete("function", settings.function_name, lambda: lam.delete_function(FunctionName=settings.function_name))
    layer_deleted, layer_kept = _delete_layer_versions(lam, settings.layer_name)
    record(Change("layer", settings.layer_name, "deleted" if layer_deleted else "absent"))
    if layer_kept:
        report.not_ours.add(("layer", settings.layer_name))
        record(
            Change("layer", settings.layer_name, "not ours", f"{layer_kept} version(s) not published by the lab: kept")
        )
    for group in lab_log_groups(settings):
        if group != settings.log_group or ours("log group", group):
            delete("log group", group, lambda group=group: logs.delete_log_group(logGroupName=group))
    if ours("queue", settings.failure_queue_name):
        delete(
            "queue",
            settings.failure_queue_name,
            lambda: sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=settings.failure_queue_name)["QueueUrl"]),
        )
    for role in lab_roles(settings):
        if ours("role", role):
            for change in _delete_role(aws.client("iam"), role):
                record(change)
    for repository in lab_repositories(settings):
        if ours("ecr repository", repository):
            delete(
                "ecr repository",
                repository,
                lambda name=repository: ecr.delete_repository(repositoryName=name, force=True),
            )

    artifacts = f"{settings.mlflow_artifacts_prefix.strip('/')}/"
    if keep_registry:
        report.kept.append(f"s3://{settings.model_bucket}/{artifacts} (mlflow's artifacts: --keep-registry)")
    else:
        for change in _delete_registry_entries(settings):
            record(change)
    for bucket in settings.buckets:
        if not ours("bucket", bucket):
            continue
        if keep_registry and bucket == settings.model_bucket:
            kept = f"everything but {artifacts} deleted (--keep-registry)"
            empty = partial(_delete_bucket, s3, bucket, keep=artifacts)
            delete("bucket", bucket, empty, done="updated", detail=kept)
        else:
            delete("bucket", bucket, partial(_delete_bucket, s3, bucket))

    kept_buckets = (settings.model_bucket,) if keep_registry else ()
    for check in checks(settings, aws, kept_buckets=kept_buckets, not_ours=report.not_ours):
        report.checks.append(check)
        on_check(check)
    return report


# -- what the lab creates, by name (the inventory's, but for the endpoint's log group: SageMaker makes it) ---------


def lab_roles(settings: Settings) -> tuple[str, ...]:
    return ownership.names(settings, "role")


def lab_repositories(settings: Settings) -> tuple[str, ...]:
    return ownership.names(settings, "ecr repository")


def lab_log_groups(settings: Settings) -> tuple[str, ...]:
    """The function's (bootstrap makes it) and, on AWS, the SageMaker endpoint's (SageMaker makes it)."""
    return (settings.log_group, settings.sagemaker_log_group)


def _sagemaker_api(settings: Settings, aws: Aws) -> tuple[str | None, str | None]:
    """Where SageMaker's API is (None: where the SDK resolves it), or why nothing can be there to ask about."""
    if aws.on_aws:
        return None, None
    url = settings.sagemaker_emulator_url
    if stack.healthy(sagemaker.emulator_service(settings).health_url):
        return url, None
    # Offline, SageMaker is moto, which keeps everything in memory: not running, it holds nothing.
    return None, f"moto (the offline SageMaker) is not running at {url}: it keeps nothing once stopped"


# -- deletions -----------------------------------------------------------------------------------------------------


def _clear_notification(s3: Any, bucket: str) -> None:
    s3.head_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})


def _delete_layer_versions(lam: Any, name: str) -> tuple[int, int]:
    """Delete the versions the lab published; (how many, how many others were kept: not the lab's)."""
    versions = [
        v for page in lam.get_paginator("list_layer_versions").paginate(LayerName=name) for v in page["LayerVersions"]
    ]
    ours = [version for version in versions if ownership.layer_version_is_ours(version)]
    for version in ours:
        lam.delete_layer_version(LayerName=name, VersionNumber=version["Version"])
    return len(ours), len(versions) - len(ours)


def _delete_role(iam: Any, name: str) -> list[Change]:
    """A role and whatever policies are on it (IAM refuses to delete a role that still has any)."""
    try:
        inline = [
            p for page in iam.get_paginator("list_role_policies").paginate(RoleName=name) for p in page["PolicyNames"]
        ]
        attached = [
            p["PolicyArn"]
            for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=name)
            for p in page["AttachedPolicies"]
        ]
    except ClientError as error:
        if not is_not_found(error):
            raise
        return [Change("role", name, "absent")]
    changes = []
    for policy in inline:
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
        changes.append(Change("role policy", f"{name}/{policy}", "deleted"))
    for arn in attached:
        iam.detach_role_policy(RoleName=name, PolicyArn=arn)
        changes.append(Change("role policy", f"{name}/{arn.rsplit('/', 1)[-1]}", "detached"))
    iam.delete_role(RoleName=name)
    return [*changes, Change("role", name, "deleted")]


def _delete_bucket(s3: Any, bucket: str, *, keep: str | None = None) -> None:
    """Every object version, then the bucket; with ``keep`` (a key prefix), only the objects outside it."""
    s3.head_bucket(Bucket=bucket)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        doomed = [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for item in page.get("Versions", []) + page.get("DeleteMarkers", [])
            if keep is None or not item["Key"].startswith(keep)
        ]
        if doomed:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed, "Quiet": True})
    if keep is None:
        s3.delete_bucket(Bucket=bucket)


def _delete_registry_entries(settings: Settings) -> list[Change]:
    try:
        return registry.delete_tagged(settings)
    except registry.ServerUnavailable as error:
        return [Change("registry", settings.mlflow_tracking_uri, "unchecked", str(error))]


# -- the check afterwards ------------------------------------------------------------------------------------------


def checks(
    settings: Settings, aws: Aws, *, kept_buckets: Iterable[str] = (), not_ours: Iterable[tuple[str, str]] = ()
) -> list[Check]:
    """Look, service by service, for anything of the lab's under ``settings.prefix`` (what was kept on purpose, or
    is not the lab's, is not looked for)."""
    skip = {name for _, name in not_ours} | set(kept_buckets)
    wanted_buckets = [b for b in settings.buckets if b not in skip]
    groups, roles, repositories = (
        [name for name in names if name not in skip]
        for names in (lab_log_groups(settings), lab_roles(settings), lab_repositories(settings))
    )
    queues = [name for name in (settings.failure_queue_name,) if name not in skip]
    lambda_names = [name for name in (settings.function_name, settings.layer_name) if name not in skip]
    return [
        _ask("S3", f"buckets {', '.join(wanted_buckets)}", lambda: _buckets(aws, wanted_buckets)),
        _ask("Lambda", f"function and layer {', '.join(lambda_names)}", lambda: _lambda(aws, lambda_names)),
        _ask("CloudWatch Logs", f"log groups {', '.join(groups)}", lambda: _log_groups(aws, groups)),
        _ask("SQS", f"queue {', '.join(queues)}", lambda: [q for name in queues for q in _queues(aws, name)]),
        _ask("IAM", f"roles {', '.join(roles)}", lambda: _roles(aws, roles)),
        _ask("ECR", f"repositories {', '.join(repositories)}", lambda: _repositories(aws, repositories)),
        _sagemaker_check(settings, aws),
        _ask(
            "Tagging API",
            f"anything tagged {PREFIX_TAG}={settings.prefix}",
            lambda: _tagged(aws, settings.prefix, kept_buckets),
        ),
    ]


def _ask(service: str, looked_for: str, find: Callable[[], list[str]]) -> Check:
    try:
        return Check(service, looked_for, tuple(find()))
    except (ClientError, BotoCoreError) as error:
        return Check(service, looked_for, checked=False, note=str(error).splitlines()[0])


def _sagemaker_check(settings: Settings, aws: Aws) -> Check:
    looked_for = f"endpoint {settings.sagemaker_endpoint}, its configs and models"
    url, absent = _sagemaker_api(settings, aws)
    if absent is not None:
        return Check("SageMaker", looked_for, note=absent)
    try:
        left = sagemaker.remaining(settings, aws, sagemaker_url=url)
    except sagemaker.SageMakerUnreachable as error:
        return Check("SageMaker", looked_for, checked=False, note=str(error))
    return Check("SageMaker", looked_for, tuple(f"{kind} {name}" for kind, name in left))


def _buckets(aws: Aws, names: list[str]) -> list[str]:
    existing = {bucket["Name"] for bucket in aws.client("s3").list_buckets().get("Buckets", [])}
    return [name for name in names if name in existing]


def _lambda(aws: Aws, names: Iterable[str]) -> list[str]:
    lam, wanted = aws.client("lambda"), set(names)
    functions = [
        f"function {fn['FunctionName']}"
        for page in lam.get_paginator("list_functions").paginate()
        for fn in page["Functions"]
        if fn["FunctionName"] in wanted
    ]
    layers = [
        f"layer {layer['LayerName']}"
        for page in lam.get_paginator("list_layers").paginate()
        for layer in page["Layers"]
        if layer["LayerName"] in wanted
    ]
    return functions + layers


def _log_groups(aws: Aws, names: Iterable[str]) -> list[str]:
    paginator = aws.client("logs").get_paginator("describe_log_groups")
    return [
        group["logGroupName"]
        for name in names
        for page in paginator.paginate(logGroupNamePrefix=name)
        for group in page["logGroups"]
        if group["logGroupName"] == name
    ]


def _queues(aws: Aws, name: str) -> list[str]:
    urls = aws.client("sqs").list_queues(QueueNamePrefix=name).get("QueueUrls", [])
    return [url for url in urls if url.rsplit("/", 1)[-1] == name]


def _roles(aws: Aws, names: Iterable[str]) -> list[str]:
    wanted = set(names)
    pages = aws.client("iam").get_paginator("list_roles").paginate()
    return sorted(role["RoleName"] for page in pages for role in page["Roles"] if role["RoleName"] in wanted)


def _repositories(aws: Aws, names: Iterable[str]) -> list[str]:
    wanted = set(names)
    pages = aws.client("ecr").get_paginator("describe_repositories").paginate()
    return sorted(r["repositoryName"] for page in pages for r in page["repositories"] if r["repositoryName"] in wanted)


def tagged_arns(aws: Aws, prefix: str) -> list[str]:
    """The ARNs the Resource Groups Tagging API lists with ``mlops-lab:prefix=<prefix>`` (this region; buckets too)."""
    pages = (
        aws.client("resourcegroupstaggingapi")
        .get_paginator("get_resources")
        .paginate(TagFilters=[{"Key": PREFIX_TAG, "Values": [prefix]}])
    )
    return [mapping["ResourceARN"] for page in pages for mapping in page["ResourceTagMappingList"]]


def _tagged(aws: Aws, prefix: str, kept_buckets: set[str]) -> list[str]:
    kept = tuple(f":::{bucket}" for bucket in kept_buckets)
    return [arn for arn in tagged_arns(aws, prefix) if not (kept and arn.endswith(kept))]
