"""Delete: the endpoint, every endpoint config and model of it, their model data.

``delete_deployment`` undoes a deployment: the endpoint (waited for until gone), every endpoint config and model
mlflow named for it (earlier deploys' leftovers too) and their model data; ``remaining`` lists what of that is still
there (teardown's final check).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlops_lab.aws import Aws, Change, is_not_found
from mlops_lab.errors import ExitCode, LabError
from mlops_lab.sagemaker.control_plane import sagemaker_client
from mlops_lab.settings import Settings

# What mlflow's client calls what it creates for endpoint E (mlflow.sagemaker._get_unique_name): "<E'><suffix><20 hex>",
# where E' is E middle-truncated ("---") so that the whole name fits SageMaker's 63 characters. The model data of a
# model M is s3://<bucket>/M/model.tar.gz.
MODEL_SUFFIX, CONFIG_SUFFIX, UNIQUE_ID_LENGTH = "-model-", "-config-", 20
NAME_LIMIT = 63
DELETE_WAIT = {"Delay": 10, "MaxAttempts": 90}  # endpoint_deleted: up to 15 min (moto deletes at once)


def mlflow_base_name(endpoint: str, suffix: str) -> str:
    """The part of mlflow's name for ``endpoint``'s model (``suffix`` "-model-") or config ("-config-") before the
    unique id: the endpoint's name, middle-truncated as mlflow's ``_truncate_name`` does when it is too long."""
    limit = NAME_LIMIT - len(suffix) - UNIQUE_ID_LENGTH
    if len(endpoint) <= limit:
        return endpoint
    start = (limit - 3) // 2
    return f"{endpoint[:start]}---{endpoint[len(endpoint) - (limit - 3 - start) :]}"


def name_pattern(endpoint: str, suffix: str) -> re.Pattern[str]:
    """The whole of mlflow's names for ``endpoint``'s models or configs: the base name, ``suffix``, the unique id."""
    return re.compile(rf"{re.escape(mlflow_base_name(endpoint, suffix) + suffix)}[0-9a-f]{{{UNIQUE_ID_LENGTH}}}")


def _is_missing(error: Exception) -> bool:
    """SageMaker's "not there": a ValidationException "Could not find ..." (AWS and moto alike)."""
    from botocore.exceptions import ClientError

    if not isinstance(error, ClientError):
        return False
    code = error.response.get("Error", {}).get("Code")
    return is_not_found(error) or (code == "ValidationException" and "Could not find" in str(error))


def _paginate(sm: Any, operation: str, key: str, name_key: str, endpoint: str, suffix: str) -> list[str]:
    """The names ``operation`` lists that mlflow gave ``endpoint``'s configs or models (NameContains narrows the
    listing on AWS; moto ignores it, hence the pattern)."""
    pattern = name_pattern(endpoint, suffix)
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
    with sagemaker_client(aws, sagemaker_url) as sm:
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
    with sagemaker_client(aws, sagemaker_url) as sm:
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
    pattern = name_pattern(settings.sagemaker_endpoint, MODEL_SUFFIX)
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
