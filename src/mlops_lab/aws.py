"""AWS access through the SDK's standard configuration only.

boto3 itself reads ``AWS_ENDPOINT_URL`` (emulator) or not (real AWS), the region and the credentials; nothing here
knows which one it is talking to.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

DEFAULT_REGION = "us-east-1"
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=120)


def lab_environment(endpoint_url: str) -> dict[str, str]:
    """The SDK variables that point the lab's scripts at the embedded emulator (dummy credentials: it is local)."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
    }


class Aws:
    """A boto3 session with the handful of facts the lab needs: region, account id, partition."""

    def __init__(self, session: boto3.session.Session | None = None) -> None:
        self.session = session or boto3.session.Session()
        self._clients: dict[str, Any] = {}

    @property
    def region(self) -> str:
        return self.session.region_name or DEFAULT_REGION

    @property
    def endpoint_url(self) -> str | None:
        return os.environ.get("AWS_ENDPOINT_URL")

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(service, region_name=self.region, config=_CONFIG)
        return self._clients[service]

    @cached_property
    def identity(self) -> dict[str, str]:
        return self.client("sts").get_caller_identity()

    @property
    def account_id(self) -> str:
        return self.identity["Account"]

    @property
    def partition(self) -> str:
        return self.identity["Arn"].split(":")[1]


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
    }
