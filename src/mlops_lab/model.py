"""The published model: the one ONNX object the Lambda and the API serve, and what its S3 metadata says about it.

``s3://<model bucket>/<model key>``; the Lambda reloads it when its ETag changes and the API polls for it, so
publishing is the whole of a rollout. Its metadata names the registry version it came from (``contract`` keys).
"""

from __future__ import annotations

import hashlib

from botocore.exceptions import ClientError

from mlops_lab.aws import Aws, Change, is_not_found
from mlops_lab.contract import META_MODEL_NAME, META_MODEL_VERSION, META_RUN_ID
from mlops_lab.settings import Settings


def uri(settings: Settings) -> str:
    return f"s3://{settings.model_bucket}/{settings.model_key}"


def publish(
    settings: Settings,
    aws: Aws,
    model: bytes,
    *,
    version: str | None = None,
    run_id: str = "",
    name: str | None = None,
) -> Change:
    """Put the ONNX model where the Lambda (and the API) read it, unless that exact file is already there.
    ``name``/``version``/``run_id``: the registered model it is (recorded in its metadata; the name defaults to the
    demo model's)."""
    s3 = aws.client("s3")
    digest = hashlib.md5(model, usedforsecurity=False).hexdigest()
    head = _head(settings, aws)
    if head is not None and head["ETag"].strip('"') == digest:
        return Change("model", uri(settings), "unchanged")
    metadata = {META_MODEL_NAME: name or settings.model_name}
    if version:
        metadata |= {META_MODEL_VERSION: version, META_RUN_ID: run_id}
    s3.put_object(
        Bucket=settings.model_bucket,
        Key=settings.model_key,
        Body=model,
        ContentType="application/octet-stream",
        Metadata=metadata,
    )
    return Change("model", uri(settings), "published", f"{len(model) / 1e6:.1f} MB")


def published_metadata(settings: Settings, aws: Aws) -> dict[str, str] | None:
    """The published model object's S3 metadata (empty when published unversioned), or None when none is published."""
    head = _head(settings, aws)
    return None if head is None else head.get("Metadata", {})


def live_name(settings: Settings, aws: Aws) -> str | None:
    """The registered name of the model the bucket serves (None: nothing published, or published before names were
    recorded)."""
    return (published_metadata(settings, aws) or {}).get(META_MODEL_NAME)


def live_version(settings: Settings, aws: Aws) -> str | None:
    """The registry version the model bucket serves now, or None (not published, or published unversioned)."""
    return (published_metadata(settings, aws) or {}).get(META_MODEL_VERSION)


def _head(settings: Settings, aws: Aws) -> dict | None:
    try:
        return aws.client("s3").head_object(Bucket=settings.model_bucket, Key=settings.model_key)
    except ClientError as error:
        if is_not_found(error):
            return None
        raise
