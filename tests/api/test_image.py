"""The ECR side of `mlops-lab image push` (moto), and the message when no engine is there."""

from __future__ import annotations

import json

import pytest

from mlops_lab import image
from mlops_lab.aws import Aws
from mlops_lab.settings import Settings


@pytest.fixture
def ecr(monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with moto.mock_aws():
        yield boto3.client("ecr")


def test_repository_is_created_idempotently(ecr):
    settings = Settings(_env_file=None)
    first_uri, first = image.ensure_repository(settings, Aws())
    second_uri, second = image.ensure_repository(settings, Aws())
    assert (first.action, second.action) == ("created", "unchanged")
    assert first_uri == second_uri and first_uri.endswith("/mlops-lab-api")
    (repo,) = ecr.describe_repositories()["repositories"]
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True
    policy = json.loads(ecr.get_lifecycle_policy(repositoryName="mlops-lab-api")["lifecyclePolicyText"])
    assert policy == image.LIFECYCLE_POLICY


def test_missing_engine_is_explained(monkeypatch):
    monkeypatch.setattr(image.shutil, "which", lambda name: None)
    with pytest.raises(image.EngineMissing, match=r"apt-get install -y docker\.io"):
        image.build_and_push(Settings(_env_file=None))


def test_engine_not_answering_is_explained(monkeypatch, tmp_path):
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(image.shutil, "which", lambda name: str(fake))
    with pytest.raises(image.EngineMissing, match="no engine answers"):
        image.docker_cli()
