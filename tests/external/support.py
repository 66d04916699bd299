"""What the external suite's conftest and tests share (import it from here, never from the conftest: pytest imports a
conftest itself, and importing it again would run it twice, with two prefixes)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from mlops_lab.aws import Aws
from mlops_lab.settings import Settings
from tests.support import isolated_environment

PREFIX = f"ext-{secrets.token_hex(4)}"  # this run's, and only this run's, resources
ALLOW_AWS = "LAB_EXTERNAL_ALLOW_AWS"
REFUSED_EXIT_CODE = 4  # pytest's own "usage error": the run needs the opt-in variable
ROWS = 200  # rows of the batch the suite uploads
# How long to wait for an output object: a cold start (onnxruntime from the layer) plus queueing; AWS's included.
OUTPUT_WAIT = {"Delay": 0.5, "MaxAttempts": 480}


def aws_refusal(aws: Aws) -> str | None:
    """Why the suite will not run against this target (None: it will)."""
    if not aws.on_aws or os.environ.get(ALLOW_AWS) == "1":
        return None
    return (
        f"Refusing to run the external suite against AWS ({aws.describe()}): it would create, in that account, 3 S3 "
        f"buckets ({PREFIX}-input/-output/-model), an IAM role, a Lambda function with an onnxruntime layer (~42 MB "
        "through S3), an SQS queue and a CloudWatch log group, invoke the function a few times and delete all of it "
        "at the end. That costs a few cents at most (mostly within the free tier), but it is your account: set "
        f"{ALLOW_AWS}=1 to allow it, or point the SDK at an emulator (AWS_ENDPOINT_URL, or a profile with an "
        "endpoint_url)."
    )


@dataclass
class External:
    """The target, the run's settings, the model it published and the batch it uploads."""

    settings: Settings
    aws: Aws
    model_name: str
    batch: Path  # the CSV the suite uploads (ROWS rows, the model's columns)
    torn_down: bool = False

    @property
    def s3(self) -> Any:
        return self.aws.client("s3")


_runner = CliRunner()


def teardown_by_cli(settings: Settings) -> Any:
    """`mlops-lab teardown --yes` with these settings (as LAB_* variables) and the SDK's own configuration; click's
    Result (``exit_code``, ``output``)."""
    from mlops_lab.cli import app

    with isolated_environment(settings):
        return _runner.invoke(app, ["teardown", "--yes"])


def leftovers(client: Callable[[str], Any], prefix: str) -> list[str]:
    """Buckets, Lambda functions and layers, IAM roles, SQS queues and log groups (``/aws/lambda/<prefix>...``) whose
    names start with ``prefix``, through ``client(service_name)`` (``Aws().client``, or boto3 clients of an endpoint of
    one's choosing)."""
    s3, lam, iam, sqs, logs = (client(name) for name in ("s3", "lambda", "iam", "sqs", "logs"))
    found = [f"bucket {b['Name']}" for b in s3.list_buckets().get("Buckets", []) if b["Name"].startswith(prefix)]
    found += [
        f"function {f['FunctionName']}"
        for page in lam.get_paginator("list_functions").paginate()
        for f in page["Functions"]
        if f["FunctionName"].startswith(prefix)
    ]
    found += [
        f"layer {layer['LayerName']}"
        for page in lam.get_paginator("list_layers").paginate()
        for layer in page["Layers"]
        if layer["LayerName"].startswith(prefix)
    ]
    found += [
        f"role {role['RoleName']}"
        for page in iam.get_paginator("list_roles").paginate()
        for role in page["Roles"]
        if role["RoleName"].startswith(prefix)
    ]
    found += [f"queue {url}" for url in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])]
    found += [
        f"log group {group['logGroupName']}"
        for page in logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=f"/aws/lambda/{prefix}")
        for group in page["logGroups"]
    ]
    return found
