"""Where the SageMaker clients talk to.

Offline, SageMaker itself: MiniStack has none, so moto serves the SageMaker control plane on 127.0.0.1 and only the
``sagemaker``/``sagemaker-runtime`` clients are pointed at it, through the SDK's per-service endpoint variables
(``AWS_ENDPOINT_URL_SAGEMAKER``, ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``). S3, IAM, STS and ECR stay on MiniStack.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlops_lab import stack
from mlops_lab.aws import Aws
from mlops_lab.errors import LOCAL_HOSTS, ExitCode, LabError
from mlops_lab.settings import Settings

SERVICE_NAME = "sagemaker-emulator"
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME")


class SageMakerUnreachable(LabError):
    """SageMaker's API does not answer at all (offline: moto is not running). A RuntimeError, like every LabError."""

    exit_code = ExitCode.UNREACHABLE


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
        hint = "moto is not running (`mlops-lab deploy sagemaker` starts it)" if url else "check the network"
        raise SageMakerUnreachable(
            f"SageMaker does not answer at {where}: {hint}",
            ExitCode.NOT_RUNNING if local else ExitCode.UNREACHABLE,
        ) from error
