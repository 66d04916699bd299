"""`mlops-lab transform`: a SageMaker Batch Transform job, started and watched with the SDK's own calls.

The same calls go to the lab's SageMaker offline and to AWS; on both, the request is AWS's ``CreateTransformJob``
and its answer AWS's ``DescribeTransformJob``. The model defaults to the one `mlops-lab deploy sagemaker` made for
the lab's endpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlops_lab.aws import Aws
from mlops_lab.errors import ExitCode, LabError
from mlops_lab.sagemaker.control_plane import sagemaker_client
from mlops_lab.settings import Settings

INSTANCE_TYPE = "ml.m5.xlarge"
TERMINAL = ("Completed", "Failed", "Stopped")


class NoModel(LabError):
    """No SageMaker model to run the job with: none named, and no deployment of the lab's to take it from."""

    exit_code = ExitCode.NOT_RUNNING


class TransformFailed(LabError):
    """The job ended Failed (its FailureReason says why) or Stopped."""

    exit_code = ExitCode.JOB_FAILED


@dataclass(frozen=True)
class TransformOptions:
    """What a person chooses for a job (None: AWS's default)."""

    input_uri: str
    output_uri: str
    model: str | None = None
    name: str | None = None
    instances: int = 1
    instance_type: str = INSTANCE_TYPE
    strategy: str | None = None
    max_payload_mb: int | None = None
    max_concurrent: int | None = None
    split_type: str | None = "Line"
    compression: str | None = None
    assemble_with: str | None = "Line"
    content_type: str = "text/csv"
    accept: str | None = "text/csv"
    input_filter: str | None = None
    join_source: str | None = None
    output_filter: str | None = None
    manifest: bool = False


def job_request(options: TransformOptions, model: str, name: str) -> dict[str, Any]:
    """``CreateTransformJob``'s request, with only the fields the person set (AWS fills in the rest)."""
    transform_input: dict[str, Any] = {
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "ManifestFile" if options.manifest else "S3Prefix",
                "S3Uri": options.input_uri,
            }
        },
        "ContentType": options.content_type,
    }
    if options.split_type:
        transform_input["SplitType"] = options.split_type
    if options.compression:
        transform_input["CompressionType"] = options.compression
    transform_output: dict[str, Any] = {"S3OutputPath": options.output_uri}
    if options.accept:
        transform_output["Accept"] = options.accept
    if options.assemble_with:
        transform_output["AssembleWith"] = options.assemble_with
    request: dict[str, Any] = {
        "TransformJobName": name,
        "ModelName": model,
        "TransformInput": transform_input,
        "TransformOutput": transform_output,
        "TransformResources": {"InstanceType": options.instance_type, "InstanceCount": options.instances},
    }
    if options.strategy:
        request["BatchStrategy"] = options.strategy
    if options.max_payload_mb is not None:
        request["MaxPayloadInMB"] = options.max_payload_mb
    if options.max_concurrent is not None:
        request["MaxConcurrentTransforms"] = options.max_concurrent
    processing = {
        key: value
        for key, value in (
            ("InputFilter", options.input_filter),
            ("JoinSource", options.join_source),
            ("OutputFilter", options.output_filter),
        )
        if value is not None
    }
    if processing:
        request["DataProcessing"] = processing
    return request


def default_model(settings: Settings, sm: Any) -> str:
    """The model behind the lab's SageMaker endpoint (`mlops-lab deploy sagemaker`)."""
    endpoint = settings.sagemaker_endpoint
    try:
        config_name = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)
    except Exception as error:
        raise NoModel(
            f"no SageMaker model named and no endpoint {endpoint} to take one from ({error}): run `mlops-lab deploy "
            "sagemaker` first, or pass --model with a model made by CreateModel"
        ) from error
    return config["ProductionVariants"][0]["ModelName"]


def job_name(now: datetime | None = None) -> str:
    return f"lab-transform-{(now or datetime.now(UTC)).strftime('%Y%m%d-%H%M%S-%f')[:-3]}"


LAB_PROGRESS = "LabProgress"  # the lab's own field of DescribeTransformJob (files, records): boto3 drops it


def keep_lab_progress(sm: Any) -> Any:
    """``sm`` (a sagemaker client) with the lab's progress field kept in DescribeTransformJob's answers: boto3 parses
    only the fields AWS's model has, and AWS has none for progress. On AWS the field is simply absent."""

    def keep(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        try:
            progress = json.loads(http_response.content).get(LAB_PROGRESS)
        except (ValueError, AttributeError):
            return
        if progress is not None:
            parsed[LAB_PROGRESS] = progress

    sm.meta.events.register("after-call.sagemaker.DescribeTransformJob", keep)
    return sm


def start(settings: Settings, aws: Aws, options: TransformOptions, *, url: str | None) -> dict[str, Any]:
    """Create the job; the request sent (its name and model filled in)."""
    with sagemaker_client(aws, url) as sm:
        model = options.model or default_model(settings, sm)
        request = job_request(options, model, options.name or job_name())
        sm.create_transform_job(**request)
    return request


def describe(aws: Aws, name: str, *, url: str | None) -> dict[str, Any]:
    with sagemaker_client(aws, url) as sm:
        return keep_lab_progress(sm).describe_transform_job(TransformJobName=name)


def wait(
    aws: Aws,
    name: str,
    *,
    url: str | None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Describe the job until it ends; ``on_update`` sees every answer. TransformFailed unless it Completed."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with sagemaker_client(aws, url) as sm:
        keep_lab_progress(sm)
        while True:
            job = sm.describe_transform_job(TransformJobName=name)
            if on_update:
                on_update(job)
            if job["TransformJobStatus"] in TERMINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise LabError(f"transform job {name} still {job['TransformJobStatus']}", ExitCode.TIMEOUT)
            time.sleep(poll_s)
    if job["TransformJobStatus"] != "Completed":
        raise TransformFailed(
            f"transform job {name} {job['TransformJobStatus']}: {job.get('FailureReason', 'stopped on request')}"
        )
    return job


def list_jobs(aws: Aws, *, url: str | None, limit: int = 20) -> list[dict[str, Any]]:
    """The latest jobs, newest first (ListTransformJobs' summaries)."""
    with sagemaker_client(aws, url) as sm:
        return sm.list_transform_jobs(MaxResults=limit, SortBy="CreationTime", SortOrder="Descending")[
            "TransformJobSummaries"
        ]


def listed_here(settings: Settings, aws: Aws, *, limit: int = 10) -> list[dict[str, Any]] | None:
    """The latest jobs for a page: offline only while the lab's SageMaker answers (None when it does not run, so a
    page never waits on it); on AWS, SageMaker's own list."""
    from mlops_lab import stack
    from mlops_lab.sagemaker.control_plane import HEALTH_PATH

    url = None if aws.on_aws else settings.sagemaker_emulator_url
    if url is not None and not stack.healthy(url + HEALTH_PATH):
        return None
    return list_jobs(aws, url=url, limit=limit)
