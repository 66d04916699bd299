"""The API image in the lab's ECR repository: create the repository (idempotent), build, tag and push.

The repository gets scan-on-push and a lifecycle policy (keep the newest ``KEEP_IMAGES`` tagged images, expire
untagged ones after a day). Building and pushing use the docker CLI when an engine answers (``docker info``);
otherwise :class:`EngineMissing` says what is missing. ECR is reached through boto3, so ``AWS_ENDPOINT_URL`` decides
between the emulator and real AWS, as everywhere in the lab.

A repository of the lab's name that exists without this lab's tag is someone else's as far as anyone can tell: it is
refused (``ownership.NotOurs``, from the inventory's entry made by ``image push``) unless ``adopt`` (`image push
--adopt`) takes it over, tagging it.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mlops_lab import ownership
from mlops_lab.aws import Aws, Change
from mlops_lab.aws import ensure_repository as ensure_ecr_repository
from mlops_lab.errors import Refused
from mlops_lab.settings import PROJECT_ROOT, Settings

KEEP_IMAGES = 10
MADE_BY = "image push"  # the inventory's name for this command (ownership.inventory)
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


class EngineMissing(Refused):
    """No usable container engine: the message says what to install or start."""


def ensure_repository(settings: Settings, aws: Aws, *, adopt: bool = False) -> tuple[str, Change]:
    """The API's ECR repository with scan-on-push and the lifecycle policy; a second call changes nothing. One of its
    name without this lab's tag is refused before any change (ownership.NotOurs) unless ``adopt``."""
    if not adopt:
        ownership.refuse(settings, ownership.strangers(settings, aws, made_by=MADE_BY), made_by=MADE_BY)
    return ensure_ecr_repository(
        aws, settings.api_repository, lifecycle_policy=LIFECYCLE_POLICY, tags=settings.resource_tags
    )


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
    aws: Aws | None = None,
    push: bool = True,
    adopt: bool = False,
) -> PushResult:
    """``docker build -f api/Dockerfile`` → tag ``<repositoryUri>:<tag>`` → log in to ECR → push; ``adopt``: take over
    a repository of the lab's name that lacks its tag (see :func:`ensure_repository`)."""
    docker = docker_cli()  # fail before touching AWS when there is nothing to build with
    aws = aws or Aws()
    uri, _ = ensure_repository(settings, aws, adopt=adopt)
    image = f"{uri}:{tag}"
    argv = [docker, "build", "-f", str(DOCKERFILE), "-t", image]
    if base_image:
        argv += ["--build-arg", f"BASE_IMAGE={base_image}"]
    subprocess.run([*argv, str(context)], check=True)
    if push:
        auth = aws.client("ecr").get_authorization_token()["authorizationData"][0]
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
