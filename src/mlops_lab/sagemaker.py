"""SageMaker through mlflow: `mlops-lab deploy sagemaker`.

The deployment itself is mlflow's own ``sagemaker`` deployments client, unpatched: it downloads the registered model
(``models:/<name>@champion``) through the tracking server, uploads it as ``model.tar.gz`` to the model bucket, then
creates the SageMaker model (image + execution role + model data), endpoint config and endpoint, and waits for
``InService``. What this module adds is what that client expects to exist, and where it talks to:

- the image: an ECR repository ``<prefix>-mlflow-pyfunc`` (on real AWS, fill it with
  ``mlflow sagemaker build-and-push-container --container <prefix>-mlflow-pyfunc``); the image URI is
  ``<repositoryUri>:<mlflow version>``, as mlflow names it;
- the execution role ``<prefix>-sagemaker-role`` (trusted by sagemaker.amazonaws.com, reads the model bucket and
  pulls from ECR), created idempotently like bootstrap's;
- offline, SageMaker itself: MiniStack has none, so moto serves the SageMaker control plane on 127.0.0.1 and only the
  ``sagemaker``/``sagemaker-runtime`` clients are pointed at it, through the SDK's per-service endpoint variables
  (``AWS_ENDPOINT_URL_SAGEMAKER``, ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``). S3, IAM, STS and ECR stay on MiniStack.

moto records endpoints but runs no containers, so ``invoke_endpoint`` is exercised by sending the very request botocore
builds for it (``text/csv`` or ``application/json`` body, Content-Type, Accept) to a container's ``/invocations``:
the lab's API, or mlflow's scoring server (what the mlflow-pyfunc image runs). See ``forward_invocations``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mlops_lab import stack
from mlops_lab.aws import Aws, Change, is_not_found
from mlops_lab.aws import ensure_repository as ensure_ecr_repository
from mlops_lab.aws import ensure_role as ensure_iam_role
from mlops_lab.settings import Settings

INSTANCE_TYPE = "ml.m5.large"
SERVICE_NAME = "sagemaker-emulator"
EXECUTION_POLICY_NAME = "sagemaker-execution"
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME")


# -- the offline SageMaker control plane (moto) ---------------------------------------------------------------------


def emulator_service(settings: Settings) -> stack.Service:
    moto = Path(sys.executable).with_name("moto_server")
    url = settings.sagemaker_emulator_url
    return stack.Service(
        name=SERVICE_NAME,
        command=[
            *([str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]),
            "-H",
            settings.emulator_host,
            "-p",
            str(settings.sagemaker_emulator_port),
        ],
        health_url=url + "/moto-api/data.json",
        env={**os.environ},
        description="moto: SageMaker control plane only (MiniStack has no SageMaker); started by `deploy sagemaker`",
        url=url,
    )


def ensure_emulator(settings: Settings) -> str:
    """Start moto's server (once; `mlops-lab down` stops it). Returns its URL."""
    stack.start(settings, emulator_service(settings))
    return settings.sagemaker_emulator_url


@contextlib.contextmanager
def sagemaker_endpoint(url: str | None) -> Iterator[None]:
    """Point only the SDK's SageMaker clients at ``url`` for the duration (None: leave the SDK's configuration alone)."""
    if url is None:
        yield
        return
    saved = {name: os.environ.get(name) for name in ENDPOINT_VARIABLES}
    os.environ.update(dict.fromkeys(ENDPOINT_VARIABLES, url))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- what mlflow's client expects to exist: image repository, execution role ---------------------------------------


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
        dry_run=dry_run,
    )


# -- deploy ---------------------------------------------------------------------------------------------------------


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
    mode: str  # create | replace (real AWS: UpdateEndpoint) | recreate (moto: delete, then create)
    changes: tuple[Change, ...] = ()


def deploy(
    settings: Settings,
    aws: Aws,
    *,
    model_uri: str | None = None,
    sagemaker_url: str | None = None,
    instance_type: str = INSTANCE_TYPE,
    timeout_s: int = 300,
) -> Deployment:
    """Deploy ``model_uri`` (default: the champion) with mlflow's SageMaker deployments client.

    A new endpoint is created; an existing one is updated in place on AWS (mlflow's ``replace`` mode), and deleted and
    created again on moto, which does not implement ``UpdateEndpoint``.

    ``sagemaker_url``: where the SageMaker API is (moto, offline); None leaves the SDK's configuration as it is.
    """
    from mlflow.deployments import get_deploy_client

    from mlops_lab import registry

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
            "tags": {"lab": settings.prefix, "model_uri": model_uri},
        }
        if exists and sagemaker_url is None:
            mode = "replace"  # UpdateEndpoint: the endpoint keeps serving while SageMaker swaps the model in
            client.update_deployment(
                name, model_uri=model_uri, flavor="python_function", config={**config, "mode": mode}
            )
        else:
            mode = "create"
            if exists:  # moto has no UpdateEndpoint: delete (endpoint, config, model, model data), then create
                mode = "recreate"
                client.delete_deployment(
                    name, config={"region_name": aws.region, "synchronous": True, "timeout_seconds": timeout_s}
                )
            client.create_deployment(name, model_uri=model_uri, flavor="python_function", config=config)
        endpoint = sm.describe_endpoint(EndpointName=name)
        endpoint_config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        variant = endpoint_config["ProductionVariants"][0]
        model = sm.describe_model(ModelName=variant["ModelName"])
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


def _mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


# -- invocations: botocore's own request, delivered to a container's /invocations ---------------------------------


class _Body(io.BytesIO):
    """What botocore reads a response from (``read`` for streaming payloads, ``stream`` for the rest)."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


def forward_invocations(session: Any, container: httpx.Client, *, variant: str = "AllTraffic") -> Callable[[], None]:
    """Deliver every ``invoke_endpoint`` of ``session``'s sagemaker-runtime clients to ``container``'s /invocations.

    The request is the one botocore serialised (body bytes, Content-Type, Accept), as SageMaker's front end passes
    it to the container; the container's answer becomes the API response (Body, ContentType). Works for clients
    created from ``session`` after this call; ``session`` is a boto3 Session (``boto3._get_default_session()`` is
    the one mlflow's deployments client uses). Returns the function that undoes it.
    """
    from botocore.awsrequest import AWSResponse

    def send(request: Any, **_: Any) -> AWSResponse | None:
        if not request.url.split("?", 1)[0].endswith("/invocations"):
            return None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in headers.items()}
        body = request.body if isinstance(request.body, bytes) else (request.body or b"")
        if hasattr(body, "read"):
            body = body.read()
        answer = container.post("/invocations", content=body, headers=headers)
        response_headers = {
            "Content-Type": answer.headers.get("content-type", "application/json"),
            "x-Amzn-Invoked-Production-Variant": variant,
        }
        if answer.status_code >= 400:  # SageMaker reports a container error as ModelError (424)
            error = {
                "message": f'Received client error ({answer.status_code}) from primary with message "{answer.text}"',
                "OriginalStatusCode": answer.status_code,
            }
            return AWSResponse(
                request.url,
                424,
                {"Content-Type": "application/json", "x-amzn-ErrorType": "ModelError"},
                _Body(json.dumps(error).encode()),
            )
        return AWSResponse(request.url, 200, response_headers, _Body(answer.content))

    event = "before-send.sagemaker-runtime.InvokeEndpoint"
    session.events.register(event, send)
    return lambda: session.events.unregister(event, send)


def invoke_through_api(settings: Settings, endpoint: str, url: str) -> list[tuple[str, str]] | None:
    """Send a CSV and a JSON ``invoke_endpoint`` for ``endpoint`` (on moto at ``url``) to the lab API's
    /invocations; (content type, answer) each, or None when the API is not running."""
    import boto3

    from mlops_lab.data import generate

    if not stack.healthy(settings.api_url + "/health"):
        return None
    session = boto3.session.Session()
    sample = generate(3, seed=5, with_label=False)
    bodies = {
        "text/csv": sample.to_csv(index=False),
        "application/json": '{"dataframe_split": ' + sample.to_json(orient="split", index=False) + "}",
    }
    answers = []
    with httpx.Client(base_url=settings.api_url, timeout=30) as container, sagemaker_endpoint(url):
        forward_invocations(session, container)
        runtime = session.client("sagemaker-runtime")
        for content_type, body in bodies.items():
            answer = runtime.invoke_endpoint(
                EndpointName=endpoint, ContentType=content_type, Accept="application/json", Body=body.encode()
            )
            answers.append((content_type, answer["Body"].read().decode()))
    return answers
