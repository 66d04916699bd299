"""The API image in the lab's ECR repository: create the repository (idempotent), build, tag and push.

The repository gets scan-on-push and a lifecycle policy (keep the newest ``KEEP_IMAGES`` tagged images, expire
untagged ones after a day). Building and pushing use the docker CLI when an engine answers (``docker info``);
otherwise :class:`EngineMissing` says what is missing. ECR is reached through boto3, so ``AWS_ENDPOINT_URL`` decides
between the emulator and real AWS, as everywhere in the lab.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_lab.settings import PROJECT_ROOT, Settings

KEEP_IMAGES = 10
DOCKERFILE = PROJECT_ROOT / "api" / "Dockerfile"

LIFECYCLE_POLICY = {
    "rules": [
        {
            "rulePriority": 1,
            "description": "expire untagged images after a day",
            "selection": {
                "tagStatus": "untagged",
                "countType": "sinceImagePushed",
                "countUnit": "days",
                "countNumber": 1,
            },
            "action": {"type": "expire"},
        },
        {
            "rulePriority": 2,
            "description": f"keep the newest {KEEP_IMAGES} images",
            "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": KEEP_IMAGES},
            "action": {"type": "expire"},
        },
    ]
}


class EngineMissing(RuntimeError):
    """No usable container engine: the message says what to install or start."""


def repository_name(settings: Settings) -> str:
    return f"{settings.prefix}-api"


def ensure_repository(settings: Settings, ecr: Any = None) -> dict[str, Any]:
    """Create the API's ECR repository with scan-on-push and the lifecycle policy; a second call changes nothing."""
    if ecr is None:
        import boto3

        ecr = boto3.client("ecr")
    name = repository_name(settings)
    try:
        repository = ecr.create_repository(
            repositoryName=name,
            imageScanningConfiguration={"scanOnPush": True},
            imageTagMutability="MUTABLE",
            tags=[{"Key": "project", "Value": settings.prefix}],
        )["repository"]
    except ecr.exceptions.RepositoryAlreadyExistsException:
        repository = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        if not repository.get("imageScanningConfiguration", {}).get("scanOnPush"):
            ecr.put_image_scanning_configuration(repositoryName=name, imageScanningConfiguration={"scanOnPush": True})
    policy = json.dumps(LIFECYCLE_POLICY, sort_keys=True)
    try:
        current = ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"]
    except ecr.exceptions.LifecyclePolicyNotFoundException:
        current = None
    if current is None or json.loads(current) != LIFECYCLE_POLICY:
        ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=policy)
    return repository


def docker_cli() -> str:
    """The docker client to use, or EngineMissing with what to do."""
    docker = shutil.which("docker")
    if docker is None:
        raise EngineMissing("no docker CLI on PATH: install Docker (Debian: `apt-get install -y docker.io`)")
    result = subprocess.run([docker, "info"], capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise EngineMissing(
            "the docker CLI is present but no engine answers `docker info`"
            + (f" ({detail[-1]})" if detail else "")
            + ": start the daemon (e.g. `dockerd --ip 127.0.0.1 &`) or point DOCKER_HOST at one"
        )
    return docker


@dataclass(frozen=True)
class PushResult:
    image: str
    repository_uri: str


def build_and_push(
    settings: Settings,
    *,
    tag: str = "latest",
    base_image: str | None = None,
    context: Path = PROJECT_ROOT,
    ecr: Any = None,
    push: bool = True,
) -> PushResult:
    """``docker build -f api/Dockerfile`` → tag ``<repositoryUri>:<tag>`` → log in to ECR → push."""
    docker = docker_cli()  # fail before touching AWS when there is nothing to build with
    if ecr is None:
        import boto3

        ecr = boto3.client("ecr")
    repository = ensure_repository(settings, ecr)
    uri = repository["repositoryUri"]
    image = f"{uri}:{tag}"
    argv = [docker, "build", "-f", str(DOCKERFILE), "-t", image]
    if base_image:
        argv += ["--build-arg", f"BASE_IMAGE={base_image}"]
    subprocess.run([*argv, str(context)], check=True)
    if push:
        auth = ecr.get_authorization_token()["authorizationData"][0]
        user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":", 1)
        subprocess.run(
            [docker, "login", "--username", user, "--password-stdin", auth["proxyEndpoint"]],
            input=password,
            text=True,
            check=True,
            capture_output=True,
        )
        subprocess.run([docker, "push", image], check=True)
    return PushResult(image=image, repository_uri=uri)
