"""What mlflow's SageMaker deployments client expects to exist: the image repository and the execution role.

- the image: an ECR repository ``<prefix>-mlflow-pyfunc`` (on real AWS, fill it with
  ``mlflow sagemaker build-and-push-container --container <prefix>-mlflow-pyfunc``); the image URI is
  ``<repositoryUri>:<mlflow version>``, as mlflow names it;
- the execution role ``<prefix>-sagemaker-role`` (trusted by sagemaker.amazonaws.com, reads the model bucket and
  pulls from ECR), created idempotently like bootstrap's.

Both are in the lab's inventory (``ownership``, made by ``deploy sagemaker``): one of these names that exists without
this lab's tag is refused (:func:`refuse_strangers`) unless the deploy adopts it (`deploy sagemaker --adopt`).
"""

from __future__ import annotations

from typing import Any

from mlops_lab import ownership
from mlops_lab.aws import Aws, Change
from mlops_lab.aws import ensure_repository as ensure_ecr_repository
from mlops_lab.aws import ensure_role as ensure_iam_role
from mlops_lab.settings import Settings

EXECUTION_POLICY_NAME = "sagemaker-execution"
MADE_BY = "deploy sagemaker"  # the inventory's name for the command that makes the repository and the role


def refuse_strangers(settings: Settings, aws: Aws) -> None:
    """ownership.NotOurs naming the repository and role of deploy's names that exist without this lab's tag (before
    anything is written: the role's policy would otherwise be replaced, and SageMaker would run as it)."""
    ownership.refuse(settings, ownership.strangers(settings, aws, made_by=MADE_BY), made_by=MADE_BY)


def trust_policy() -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }


def execution_policy(settings: Settings, aws: Aws) -> dict[str, Any]:
    arn = f"arn:{aws.partition}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ModelData",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"{arn}:s3:::{settings.model_bucket}/{settings.sagemaker_endpoint}-model-*",
            },
            {"Sid": "PullAuth", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {
                "Sid": "PullImage",
                "Effect": "Allow",
                "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                "Resource": f"{arn}:ecr:{aws.region}:{aws.account_id}:repository/{settings.sagemaker_repository}",
            },
            {
                "Sid": "Logs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"{arn}:logs:{aws.region}:{aws.account_id}:log-group:/aws/sagemaker/*",
            },
        ],
    }


def ensure_repository(settings: Settings, aws: Aws) -> tuple[str, Change]:
    return ensure_ecr_repository(aws, settings.sagemaker_repository, tags=settings.resource_tags)


def ensure_role(settings: Settings, aws: Aws, *, dry_run: bool = False) -> tuple[str, list[Change]]:
    return ensure_iam_role(
        aws,
        settings.sagemaker_role_name,
        trust=trust_policy(),
        policy_name=EXECUTION_POLICY_NAME,
        policy=execution_policy(settings, aws),
        description="SageMaker execution role for the lab's mlflow deployment",
        tags=settings.resource_tags,
        dry_run=dry_run,
    )
