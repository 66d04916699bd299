"""Where the SageMaker clients talk to.

Offline, the lab's SageMaker (``server.py``: moto's control plane records plus endpoints and transform jobs that
really run), started as a service of the lab on one loopback port; only the ``sagemaker``/``sagemaker-runtime``
clients are pointed at it (the AWS profile's ``services`` section, or the SDK's per-service endpoint variables
``AWS_ENDPOINT_URL_SAGEMAKER``, ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``). S3, IAM, STS and ECR stay on MiniStack.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlparse

from mlops_lab import stack
from mlops_lab.aws import Aws
from mlops_lab.errors import LOCAL_HOSTS, ExitCode, LabError
from mlops_lab.settings import Settings, as_environment

EMULATOR_ACCOUNT = "000000000000"  # MiniStack's account id (and LocalStack's)
HEALTH_PATH = "/_lab/health"  # the server's own (server.py imports moto: this module must not)

SERVICE_NAME = "sagemaker-emulator"
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME")


class SageMakerUnreachable(LabError):
    """SageMaker's API does not answer at all (offline: the lab's SageMaker is not running). A RuntimeError, like every LabError."""

    exit_code = ExitCode.UNREACHABLE


def emulator_service(settings: Settings, sdk: Mapping[str, str] | None = None) -> stack.Service:
    """The lab's SageMaker as a service: these settings (``LAB_*``), S3 on ``sdk`` (default: the embedded emulator's
    SDK variables, where deploy puts the model data)."""
    from mlops_lab import emulator

    url = settings.sagemaker_emulator_url
    return stack.Service(
        name=SERVICE_NAME,
        command=[sys.executable, "-m", "mlops_lab.sagemaker.server"],
        health_url=url + HEALTH_PATH,
        env={
            **os.environ,
            **(emulator.sdk_environment(settings) if sdk is None else sdk),
            **as_environment(settings),
            # moto's ARNs in the emulator's account (MiniStack's), not moto's own default
            "MOTO_ACCOUNT_ID": EMULATOR_ACCOUNT,
        },
        description="the lab's SageMaker: moto's control plane, endpoints served and transform jobs run by the lab",
        url=url,
    )


def ensure_emulator(settings: Settings, sdk: Mapping[str, str] | None = None) -> str:
    """Start the lab's SageMaker (once; `mlops-lab down` stops it). Returns its URL."""
    stack.start(settings, emulator_service(settings, sdk))
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


@contextlib.contextmanager
def sagemaker_client(aws: Aws, url: str | None) -> Iterator[Any]:
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
        hint = (
            "the lab's SageMaker is not running (`mlops-lab up` or `deploy sagemaker` starts it)"
            if url
            else "check the network"
        )
        raise SageMakerUnreachable(
            f"SageMaker does not answer at {where}: {hint}",
            ExitCode.NOT_RUNNING if local else ExitCode.UNREACHABLE,
        ) from error
