"""AWS access through the SDK's standard configuration only.

boto3 resolves the endpoint (a profile's ``endpoint_url``, ``AWS_ENDPOINT_URL_<SERVICE>``, ``AWS_ENDPOINT_URL``, else
AWS's own), the region (``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's) and the credentials; nothing here
overrides it. Whether that is an emulator or AWS is read from the endpoint it resolved (``Aws.on_aws``), never from
one variable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

DEFAULT_REGION = "us-east-1"  # where the SDK sends calls when nothing names a region (the lab says so, see `target`)
AWS_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=120)


@dataclass(frozen=True)
class Change:
    """One resource compared with what is wanted, and what was done about it (bootstrap, publish, teardown)."""

    kind: str
    name: str
    action: str  # created | updated | unchanged | deleted | absent | published | detached | unchecked | not ours
    detail: str = ""


class Aws:
    """A boto3 session with the handful of facts the lab needs: region, account id, partition.

    ``endpoint_url`` sends every client there instead of where the SDK's configuration resolves (the embedded
    emulator, given to this process explicitly rather than through its environment)."""

    def __init__(self, session: boto3.session.Session | None = None, *, endpoint_url: str | None = None) -> None:
        self.session = session or default_session()
        self._endpoint_override = endpoint_url
        self._clients: dict[str, Any] = {}

    @property
    def region(self) -> str:
        return self.session.region_name or DEFAULT_REGION

    @cached_property
    def endpoint_url(self) -> str:
        """The S3 endpoint the SDK resolved for this session (the lab's resources all live behind the same one)."""
        return self._endpoint_override or resolved_endpoint(self.session, "s3", self.region)

    @property
    def on_aws(self) -> bool:
        return is_aws_endpoint(self.endpoint_url)

    def describe(self, *, account: bool = False) -> str:
        """Where calls go, in words: "AWS (eu-west-1)" or "emulator at http://127.0.0.1:4566 (us-east-1)"; with
        ``account``, the account id as well (one quick STS call, "account unknown" when it fails: the command's own
        calls then say why)."""
        place = "AWS" if self.on_aws else f"emulator at {self.endpoint_url}"
        profile = f", profile {self.session.profile_name}" if self.session.profile_name not in (None, "default") else ""
        return f"{place} ({self.region}{profile}{f', account {self._account_or_unknown()}' if account else ''})"

    def _account_or_unknown(self) -> str:
        if "identity" in self.__dict__:
            return self.account_id
        quick = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2, read_timeout=5)
        sts = self._new_client("sts", quick)
        try:
            self.__dict__["identity"] = sts.get_caller_identity()  # the cached_property's slot
        except Exception:
            return "unknown"
        return self.account_id

    def client(self, service: str, *, config: Config | None = None) -> Any:
        """The session's client of ``service`` (one, shared); with ``config`` (other timeouts or retries), a new one
        of its own. Either goes where this session's calls go (``endpoint_url``)."""
        if config is not None:
            return self._new_client(service, _CONFIG.merge(config))
        if service not in self._clients:
            self._clients[service] = self._new_client(service, _CONFIG)
        return self._clients[service]

    def _new_client(self, service: str, config: Config) -> Any:
        return self.session.client(
            service, region_name=self.region, endpoint_url=self._endpoint_override, config=config
        )

    @cached_property
    def identity(self) -> dict[str, str]:
        return self.client("sts").get_caller_identity()

    @property
    def account_id(self) -> str:
        return self.identity["Account"]

    @property
    def partition(self) -> str:
        return self.identity["Arn"].split(":")[1]


def default_session() -> boto3.session.Session:
    """The SDK's default session, with ``AWS_REGION`` honoured: the SDKs' standard variable (the AWS CLI v2, the
    Lambda runtime and the other SDKs read it first), which boto3 alone ignores for the region."""
    return boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None)


def resolved_endpoint(session: boto3.session.Session, service: str, region: str | None = None) -> str:
    """The endpoint URL boto3 resolves for ``service`` from the session's whole configuration."""
    return session.client(service, region_name=region or session.region_name or DEFAULT_REGION).meta.endpoint_url


def is_aws_endpoint(url: str) -> bool:
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    return host.endswith(AWS_DOMAINS)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def is_not_found(error: ClientError) -> bool:
    return error_code(error) in {
        "404",
        "NoSuchKey",
        "NotFound",
        "NoSuchBucket",
        "NoSuchEntity",
        "ResourceNotFoundException",
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
    }


def policy_document(document: Any) -> Any:
    # boto3 decodes IAM's URL-encoded documents into dicts; some emulators hand back the JSON string.
    return json.loads(document) if isinstance(document, str) else document


# -- tags ---------------------------------------------------------------------------------------------------------


def tag_list(tags: Mapping[str, str], key: str = "Key", value: str = "Value") -> list[dict[str, str]]:
    """``{"k": "v"}`` as the ``[{"Key": "k", "Value": "v"}]`` most services take (ECR spells them in lower case)."""
    return [{key: k, value: v} for k, v in tags.items()]


def tag_dict(tags: list[dict[str, str]] | None, key: str = "Key", value: str = "Value") -> dict[str, str]:
    return {tag[key]: tag[value] for tag in tags or []}


def bucket_tags(s3: Any, bucket: str) -> dict[str, str]:
    """A bucket's tags (S3 answers NoSuchTagSet for a bucket without any)."""
    try:
        return tag_dict(s3.get_bucket_tagging(Bucket=bucket)["TagSet"])
    except ClientError as error:
        if error_code(error) != "NoSuchTagSet":
            raise
        return {}


def missing_tags(current: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    """The wanted tags a resource lacks or has with another value (tags it has beside them are left alone)."""
    return {key: value for key, value in wanted.items() if current.get(key) != value}


def updated(change: Change, what: str) -> Change:
    """``change`` with ``what`` among what was updated (a created resource stays "created")."""
    if change.action == "created":
        return change
    detail = what if change.action == "unchanged" else ", ".join(filter(None, (change.detail, what)))
    return Change(change.kind, change.name, "updated", detail)


# -- shared reconcilers ---------------------------------------------------------------------------------------------


def ensure_role(
    aws: Aws,
    name: str,
    *,
    trust: dict[str, Any],
    policy_name: str,
    policy: dict[str, Any],
    description: str,
    tags: Mapping[str, str] | None = None,
    dry_run: bool = False,
) -> tuple[str, list[Change]]:
    """An IAM role with exactly this trust policy and this one inline policy, carrying ``tags``; changes only what
    differs (with ``dry_run``, only says what it would change).

    Returns the role's ARN and two changes (the role, its policy)."""
    iam, tags = aws.client("iam"), tags or {}
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except ClientError as error:
        if not is_not_found(error):
            raise
        if dry_run:
            arn = f"arn:{aws.partition}:iam::{aws.account_id}:role/{name}"
            return arn, [Change("role", name, "created"), Change("role policy", f"{name}/{policy_name}", "created")]
        role = iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), Description=description, Tags=tag_list(tags)
        )["Role"]
        iam.get_waiter("role_exists").wait(RoleName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
        role_change = Change("role", name, "created")
    else:
        role_change = Change("role", name, "unchanged")
        if policy_document(role["AssumeRolePolicyDocument"]) != trust:
            if not dry_run:
                iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
            role_change = updated(role_change, "trust policy")
        current_tags = tag_dict(iam.list_role_tags(RoleName=name).get("Tags"))
        if missing := missing_tags(current_tags, tags):
            if not dry_run:
                iam.tag_role(RoleName=name, Tags=tag_list(missing))
            role_change = updated(role_change, "tags")
    return role["Arn"], [role_change, _ensure_role_policy(iam, name, policy_name, policy, dry_run=dry_run)]


def _ensure_role_policy(
    iam: Any, role: str, policy_name: str, wanted: dict[str, Any], *, dry_run: bool = False
) -> Change:
    name = f"{role}/{policy_name}"
    try:
        current = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    except ClientError as error:
        if not is_not_found(error):
            raise
        action = "created"
    else:
        if policy_document(current) == wanted:
            return Change("role policy", name, "unchanged")
        action = "updated"
    if dry_run:
        return Change("role policy", name, action)
    iam.put_role_policy(RoleName=role, PolicyName=policy_name, PolicyDocument=json.dumps(wanted))
    return Change("role policy", name, action)


def ensure_repository(
    aws: Aws, name: str, *, lifecycle_policy: dict[str, Any] | None = None, tags: Mapping[str, str] | None = None
) -> tuple[str, Change]:
    """An ECR repository with scan-on-push (and ``lifecycle_policy``, when given) carrying ``tags``; its URI and what
    was done."""
    ecr, tags = aws.client("ecr"), tags or {}
    changed = []
    try:
        repository = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        repository = ecr.create_repository(
            repositoryName=name,
            imageScanningConfiguration={"scanOnPush": True},
            imageTagMutability="MUTABLE",
            tags=tag_list(tags),
        )["repository"]
        action = "created"
    else:
        action = "unchanged"
        if not repository.get("imageScanningConfiguration", {}).get("scanOnPush"):
            ecr.put_image_scanning_configuration(repositoryName=name, imageScanningConfiguration={"scanOnPush": True})
            changed.append("scan on push")
        arn = repository["repositoryArn"]
        if missing := missing_tags(tag_dict(ecr.list_tags_for_resource(resourceArn=arn).get("tags")), tags):
            ecr.tag_resource(resourceArn=arn, tags=tag_list(missing))
            changed.append("tags")
    if lifecycle_policy is not None:
        try:
            current = json.loads(ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"])
        except ecr.exceptions.LifecyclePolicyNotFoundException:
            current = None
        if current != lifecycle_policy:
            ecr.put_lifecycle_policy(
                repositoryName=name, lifecyclePolicyText=json.dumps(lifecycle_policy, sort_keys=True)
            )
            changed.append("lifecycle policy")
    if action == "unchanged" and changed:
        action = "updated"
    uri = repository["repositoryUri"]
    return uri, Change("ecr repository", name, action, ", ".join(changed) if action == "updated" else uri)
