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

The deployment's model and endpoint carry the lab's tags through mlflow's ``tags``; mlflow gives the endpoint config
only its own ``app_name`` tag, so ``deploy`` adds the lab's to it. ``delete_deployment`` undoes a deployment: the
endpoint (waited for until gone), every endpoint config and model mlflow named for it (earlier deploys' leftovers too)
and their model data; ``remaining`` lists what of that is still there (teardown's final check).

moto records endpoints but runs no containers, so ``invoke_endpoint`` is exercised by sending the very request botocore
builds for it (``text/csv`` or ``application/json`` body, Content-Type, Accept) to a container's ``/invocations``:
the lab's API, or mlflow's scoring server (what the mlflow-pyfunc image runs). See ``forward_invocations``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from mlops_lab import stack
from mlops_lab.aws import Aws, Change, default_session, is_not_found, missing_tags, tag_dict, tag_list
from mlops_lab.aws import ensure_repository as ensure_ecr_repository
from mlops_lab.aws import ensure_role as ensure_iam_role
from mlops_lab.errors import LOCAL_HOSTS, ExitCode, LabError
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
        tags=settings.resource_tags,
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
            # mlflow puts these on the model (with model_uri) and the endpoint; see _tag for the endpoint config.
            "tags": {**settings.resource_tags, "model_uri": model_uri},
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


# -- delete: the endpoint, every endpoint config and model of it, their model data ------------------------------------

# What mlflow's client calls what it creates for endpoint E (mlflow.sagemaker._get_unique_name): "<E'><suffix><20 hex>",
# where E' is E middle-truncated ("---") so that the whole name fits SageMaker's 63 characters. The model data of a
# model M is s3://<bucket>/M/model.tar.gz.
MODEL_SUFFIX, CONFIG_SUFFIX, UNIQUE_ID_LENGTH = "-model-", "-config-", 20
NAME_LIMIT = 63
DELETE_WAIT = {"Delay": 10, "MaxAttempts": 90}  # endpoint_deleted: up to 15 min (moto deletes at once)


class SageMakerUnreachable(LabError):
    """SageMaker's API does not answer at all (offline: moto is not running). A RuntimeError, like every LabError."""

    exit_code = ExitCode.UNREACHABLE


def mlflow_base_name(endpoint: str, suffix: str) -> str:
    """The part of mlflow's name for ``endpoint``'s model (``suffix`` "-model-") or config ("-config-") before the
    unique id: the endpoint's name, middle-truncated as mlflow's ``_truncate_name`` does when it is too long."""
    limit = NAME_LIMIT - len(suffix) - UNIQUE_ID_LENGTH
    if len(endpoint) <= limit:
        return endpoint
    start = (limit - 3) // 2
    return f"{endpoint[:start]}---{endpoint[len(endpoint) - (limit - 3 - start) :]}"


def _name_pattern(endpoint: str, suffix: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(mlflow_base_name(endpoint, suffix) + suffix)}[0-9a-f]{{{UNIQUE_ID_LENGTH}}}")


def _is_missing(error: Exception) -> bool:
    """SageMaker's "not there": a ValidationException "Could not find ..." (AWS and moto alike)."""
    from botocore.exceptions import ClientError

    if not isinstance(error, ClientError):
        return False
    code = error.response.get("Error", {}).get("Code")
    return is_not_found(error) or (code == "ValidationException" and "Could not find" in str(error))


@contextlib.contextmanager
def _sagemaker_client(aws: Aws, url: str | None) -> Iterator[Any]:
    """A SageMaker client (at ``url``, or where the SDK resolves it); a connection failure becomes
    SageMakerUnreachable."""
    from botocore.config import Config
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

    with sagemaker_endpoint(url):
        sm = aws.session.client(
            "sagemaker",
            region_name=aws.region,
            config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=60),
        )
    where = sm.meta.endpoint_url
    try:
        yield sm
    except (EndpointConnectionError, ConnectTimeoutError) as error:
        local = urlparse(where).hostname in LOCAL_HOSTS
        hint = "moto is not running (`mlops-lab deploy sagemaker` starts it)" if url else "check the network"
        raise SageMakerUnreachable(
            f"SageMaker does not answer at {where}: {hint}",
            ExitCode.NOT_RUNNING if local else ExitCode.UNREACHABLE,
        ) from error


def _paginate(sm: Any, operation: str, key: str, name_key: str, endpoint: str, suffix: str) -> list[str]:
    """The names ``operation`` lists that mlflow gave ``endpoint``'s configs or models (NameContains narrows the
    listing on AWS; moto ignores it, hence the pattern)."""
    pattern = _name_pattern(endpoint, suffix)
    names = []
    for page in sm.get_paginator(operation).paginate(NameContains=mlflow_base_name(endpoint, suffix)):
        names += [item[name_key] for item in page.get(key, []) if pattern.fullmatch(item[name_key])]
    return names


@dataclass(frozen=True)
class _Found:
    endpoint: dict[str, Any] | None
    configs: list[str]  # the endpoint's current config first
    models: list[str]


def _find(settings: Settings, sm: Any) -> _Found:
    name = settings.sagemaker_endpoint
    try:
        endpoint: dict[str, Any] | None = sm.describe_endpoint(EndpointName=name)
    except Exception as error:
        if not _is_missing(error):
            raise
        endpoint = None
    configs = [endpoint["EndpointConfigName"]] if endpoint else []
    configs += [
        c
        for c in _paginate(sm, "list_endpoint_configs", "EndpointConfigs", "EndpointConfigName", name, CONFIG_SUFFIX)
        if c not in configs
    ]
    models: list[str] = []
    for config in configs:  # the models the endpoint's configs serve (whatever their names), then mlflow's leftovers
        try:
            variants = sm.describe_endpoint_config(EndpointConfigName=config).get("ProductionVariants", [])
        except Exception as error:
            if not _is_missing(error):
                raise
            continue
        models += [v["ModelName"] for v in variants if v.get("ModelName") and v["ModelName"] not in models]
    models += [m for m in _paginate(sm, "list_models", "Models", "ModelName", name, MODEL_SUFFIX) if m not in models]
    return _Found(endpoint, configs, models)


def remaining(settings: Settings, aws: Aws, *, sagemaker_url: str | None = None) -> list[tuple[str, str]]:
    """(kind, name) of the lab's SageMaker endpoint and of the endpoint configs and models of it still there: what
    ``delete_deployment`` deletes. SageMakerUnreachable when SageMaker's API does not answer."""
    with _sagemaker_client(aws, sagemaker_url) as sm:
        found = _find(settings, sm)
    return [
        *([("SageMaker endpoint", settings.sagemaker_endpoint)] if found.endpoint else []),
        *(("endpoint config", name) for name in found.configs),
        *(("SageMaker model", name) for name in found.models),
    ]


def delete_deployment(
    settings: Settings,
    aws: Aws,
    *,
    sagemaker_url: str | None = None,
    on_change: Callable[[Change], None] = lambda _: None,
) -> list[Change]:
    """Delete the lab's SageMaker endpoint (and wait until it is gone), every endpoint config and model of it (the
    endpoint's own and those earlier deploys left: mlflow's names for this endpoint), then their model data in the
    model bucket (``<endpoint>-model-*/``; nothing when the bucket does not exist).

    One Change per resource deleted, or one "absent" per kind when there was none. SageMakerUnreachable when
    SageMaker's API does not answer (nothing is deleted then)."""
    from botocore.exceptions import WaiterError

    changes: list[Change] = []

    def record(kind: str, name: str, action: str, detail: str = "") -> None:
        change = Change(kind, name, action, detail)
        changes.append(change)
        on_change(change)

    name = settings.sagemaker_endpoint
    with _sagemaker_client(aws, sagemaker_url) as sm:
        found = _find(settings, sm)
        if found.endpoint is None:
            record("SageMaker endpoint", name, "absent")
        else:
            try:
                sm.delete_endpoint(EndpointName=name)
                sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=DELETE_WAIT)
            except WaiterError as error:
                seconds = DELETE_WAIT["Delay"] * DELETE_WAIT["MaxAttempts"]
                raise LabError(
                    f"SageMaker endpoint {name} is still there {seconds} s after its deletion ({error}): "
                    "run `mlops-lab deploy sagemaker --delete` again",
                    ExitCode.TIMEOUT,
                ) from error
            except Exception as error:
                if not _is_missing(error):  # gone meanwhile
                    raise
            record("SageMaker endpoint", name, "deleted", f"was {found.endpoint.get('EndpointStatus', '?')}")
        for kind, names, delete in (
            ("endpoint config", found.configs, lambda n: sm.delete_endpoint_config(EndpointConfigName=n)),
            ("SageMaker model", found.models, lambda n: sm.delete_model(ModelName=n)),
        ):
            deleted = 0
            for item in names:
                try:
                    delete(item)
                except Exception as error:
                    if not _is_missing(error):
                        raise
                    continue
                deleted += 1
                record(kind, item, "deleted")
            if not deleted:
                suffix = CONFIG_SUFFIX if kind == "endpoint config" else MODEL_SUFFIX
                record(kind, f"{mlflow_base_name(name, suffix)}{suffix}*", "absent")
    for change in delete_model_data(settings, aws):
        changes.append(change)
        on_change(change)
    return changes


def delete_model_data(settings: Settings, aws: Aws) -> list[Change]:
    """Delete the model data mlflow's client uploaded for the lab's endpoint: s3://<model bucket>/<model name>/...
    for each of mlflow's model names of it. One "absent" change when there is none (or no bucket)."""
    from botocore.exceptions import ClientError

    bucket, s3 = settings.model_bucket, aws.client("s3")
    base = mlflow_base_name(settings.sagemaker_endpoint, MODEL_SUFFIX) + MODEL_SUFFIX
    pattern = _name_pattern(settings.sagemaker_endpoint, MODEL_SUFFIX)
    keys: list[str] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            keys += [o["Key"] for o in page.get("Contents", []) if pattern.fullmatch(o["Key"].split("/", 1)[0])]
    except ClientError as error:
        if not is_not_found(error):
            raise
    changes = []
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        if answer.get("Errors"):
            failed = answer["Errors"][0]
            raise LabError(
                f"Could not delete s3://{bucket}/{failed['Key']}: {failed.get('Code')} {failed.get('Message')}"
            )
        changes += [Change("model data", f"s3://{bucket}/{key}", "deleted") for key in batch]
    return changes or [Change("model data", f"s3://{bucket}/{base}*", "absent")]


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
    from mlops_lab.data import generate

    if not stack.healthy(settings.api_url + "/health"):
        return None
    session = default_session()
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
