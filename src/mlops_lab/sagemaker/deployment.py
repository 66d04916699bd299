"""Deploy: mlflow's SageMaker deployments client, with what it expects to exist, pointed where SageMaker is.

The deployment's model and endpoint carry the lab's tags through mlflow's ``tags``; mlflow gives the endpoint config
only its own ``app_name`` tag, so ``deploy`` adds the lab's to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlops_lab.aws import Aws, Change, is_not_found, missing_tags, tag_dict, tag_list
from mlops_lab.sagemaker.control_plane import sagemaker_endpoint
from mlops_lab.sagemaker.prerequisites import ensure_repository, ensure_role, refuse_strangers
from mlops_lab.settings import Settings

INSTANCE_TYPE = "ml.m5.large"


@dataclass(frozen=True)
class Deployment:
    endpoint: str
    endpoint_arn: str
    status: str
    endpoint_config: str
    model: str
    image: str
    role_arn: str
    model_data: str
    instance_type: str
    model_uri: str
    mode: str  # create | replace (UpdateEndpoint, on AWS and on the lab's SageMaker alike)
    changes: tuple[Change, ...] = ()


def deploy(
    settings: Settings,
    aws: Aws,
    *,
    model_uri: str | None = None,
    sagemaker_url: str | None = None,
    instance_type: str = INSTANCE_TYPE,
    timeout_s: int = 300,
    adopt: bool = False,
) -> Deployment:
    """Deploy ``model_uri`` (default: the champion) with mlflow's SageMaker deployments client.

    A new endpoint is created; an existing one is updated in place (mlflow's ``replace`` mode: ``UpdateEndpoint``,
    which the lab's SageMaker implements offline as AWS does).

    ``sagemaker_url``: where the SageMaker API is (the lab's SageMaker, offline); None leaves the SDK's configuration
    as it is.
    ``adopt``: take over (tag) an image repository or execution role of the lab's names that lacks this lab's tag;
    without it such a one is refused (ownership.NotOurs) before anything is created or deployed.
    """
    from mlflow.deployments import get_deploy_client

    from mlops_lab import registry

    if not adopt:
        refuse_strangers(settings, aws)

    registry.client(settings)  # mlflow's client downloads the model through the tracking server
    model_uri = model_uri or f"models:/{settings.model_name}@{registry.ALIAS}"
    repository_uri, repo_change = ensure_repository(settings, aws)
    role_arn, role_changes = ensure_role(settings, aws)
    image = f"{repository_uri}:{_mlflow_version()}"
    name = settings.sagemaker_endpoint
    with sagemaker_endpoint(sagemaker_url):
        sm = aws.session.client("sagemaker", region_name=aws.region)
        client = get_deploy_client(f"sagemaker:/{aws.region}")
        exists = _endpoint_exists(sm, name)
        config = {
            "execution_role_arn": role_arn,
            "image_url": image,
            "bucket": settings.model_bucket,
            "region_name": aws.region,
            "instance_type": instance_type,
            "instance_count": 1,
            "synchronous": True,
            "timeout_seconds": timeout_s,
            # mlflow puts these on the model (with model_uri) and the endpoint; see _tag for the endpoint config.
            "tags": {**settings.resource_tags, "model_uri": model_uri},
        }
        if exists:
            mode = "replace"  # UpdateEndpoint: the endpoint keeps serving while SageMaker swaps the model in
            client.update_deployment(
                name, model_uri=model_uri, flavor="python_function", config={**config, "mode": mode}
            )
        else:
            mode = "create"
            client.create_deployment(name, model_uri=model_uri, flavor="python_function", config=config)
        endpoint = sm.describe_endpoint(EndpointName=name)
        endpoint_config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        variant = endpoint_config["ProductionVariants"][0]
        model = sm.describe_model(ModelName=variant["ModelName"])
        for arn in (endpoint["EndpointArn"], endpoint_config["EndpointConfigArn"], model["ModelArn"]):
            _tag(sm, arn, settings.resource_tags)
    container = model["PrimaryContainer"]
    return Deployment(
        endpoint=name,
        endpoint_arn=endpoint["EndpointArn"],
        status=endpoint["EndpointStatus"],
        endpoint_config=endpoint["EndpointConfigName"],
        model=model["ModelName"],
        image=container["Image"],
        role_arn=model["ExecutionRoleArn"],
        model_data=container.get("ModelDataUrl", ""),
        instance_type=variant.get("InstanceType", ""),
        model_uri=model_uri,
        mode=mode,
        changes=(repo_change, *role_changes),
    )


def _endpoint_exists(sm: Any, name: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        sm.describe_endpoint(EndpointName=name)
        return True
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound") or is_not_found(
            error
        ):
            return False
        raise


def _tag(sm: Any, arn: str, tags: dict[str, str]) -> None:
    """Add the ``tags`` a SageMaker resource lacks (or has with another value). mlflow's client tags the model and
    the endpoint with the deployment's ``tags`` but gives the endpoint config only its own ``app_name`` tag."""
    if missing := missing_tags(tag_dict(sm.list_tags(ResourceArn=arn).get("Tags")), tags):
        sm.add_tags(ResourceArn=arn, Tags=tag_list(missing))


def _mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")
