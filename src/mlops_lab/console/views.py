"""What the console shows, gathered from the library modules the CLI uses (services, model, registry, jobs,
recovery).

Each part is read on its own: a part that fails (mlflow not running, no credentials, the stack not bootstrapped)
becomes that part's one-line explanation (``mlops_lab.errors.explain``) and the rest of the page still shows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mlops_lab import jobs, model, reconcile, registry, services
from mlops_lab.aws import Aws
from mlops_lab.contract import META_MODEL_NAME, META_MODEL_VERSION
from mlops_lab.errors import ExitCode, explain
from mlops_lab.model_cache import ModelCache
from mlops_lab.sagemaker import batch_transform
from mlops_lab.settings import Settings

T = TypeVar("T")
logger = logging.getLogger("mlops_lab.console")
LISTED_JOBS = 20


@dataclass
class Part:
    """One part of the page: its value, or why it could not be read."""

    value: Any = None
    error: str = ""


def read(load: Callable[[], T]) -> Part:
    try:
        return Part(load())
    except Exception as error:
        problem = explain(error)
        if problem.code == ExitCode.UNEXPECTED:
            logger.exception("reading a part of the page failed")
            return Part(error=f"Unexpected error: {type(error).__name__}: {error} (`mlops-lab logs console` shows it)")
        return Part(error=problem.message)


@dataclass
class LiveModel:
    name: str
    version: str
    kind: str = ""
    classes: list[str] = field(default_factory=list)
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (column, type)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSchema:
    """What the published ONNX file itself says: the model's kind, its classes and its input columns."""

    kind: str
    classes: list[str]
    inputs: list[tuple[str, str]]  # (column, type)


def model_schema(settings: Settings, aws: Aws, cache: ModelCache[ModelSchema]) -> ModelSchema:
    """The live model's schema: one HEAD per call; the ONNX file is downloaded and read only when its ETag changed."""
    s3 = aws.client("s3")
    etag = s3.head_object(Bucket=settings.model_bucket, Key=settings.model_key)["ETag"]
    return cache.get(etag, lambda: _read_schema(s3, settings, etag))


def _read_schema(s3: Any, settings: Settings, etag: str) -> ModelSchema:
    from mlops_lab.inference import TabularModel

    # IfMatch: the file of the ETag the schema is cached under, or an error (the page shows it; the next one retries).
    body = s3.get_object(Bucket=settings.model_bucket, Key=settings.model_key, IfMatch=etag)["Body"].read()
    loaded = TabularModel(body, threads=1)
    inputs = [(f.name, "text" if f.is_string else ("integer" if f.is_integer else "number")) for f in loaded.features]
    return ModelSchema(loaded.kind, [str(c) for c in loaded.classes], inputs)


def links(settings: Settings) -> dict[str, str]:
    """Where the person's browser finds mlflow's UI and the API's docs (compose sets the host-side addresses)."""
    return {
        "mlflow": settings.console_mlflow_link or settings.mlflow_tracking_uri,
        "api_docs": (settings.console_api_link or settings.api_url).rstrip("/") + "/docs",
    }


def live_model(
    settings: Settings, aws: Aws, schema_cache: ModelCache[ModelSchema], versions: list[registry.VersionRow]
) -> LiveModel | None:
    metadata = model.published_metadata(settings, aws)
    if metadata is None:
        return None
    schema = model_schema(settings, aws, schema_cache)
    live = next((row for row in versions if row.live), None)
    return LiveModel(
        name=metadata.get(META_MODEL_NAME) or settings.model_name,
        version=metadata.get(META_MODEL_VERSION) or "unversioned",
        kind=schema.kind,
        classes=schema.classes,
        inputs=schema.inputs,
        metrics=dict(live.metrics) if live else {},
    )


def page(
    settings: Settings, aws_session: Callable[[], Aws], schema_cache: ModelCache[ModelSchema], jobs_cache: jobs.Cache
) -> dict[str, Any]:
    """Everything the page shows. A session that cannot be made (a profile that is not there) is one line in each
    part that needs AWS; the services and links still show."""
    session = read(aws_session)
    states = read(lambda: services.service_states(settings))
    name = _with(session, lambda aws: registry.served_name(settings, aws))
    versions = _with(session, lambda aws: registry.list_versions(settings, aws, name=name.value or settings.model_name))
    live = _with(session, lambda aws: live_model(settings, aws, schema_cache, versions.value or []))
    return {
        "services": states,
        "health": services.lab_health(states.value) if states.value else None,
        "registered_name": name.value or settings.model_name,
        "versions": versions,
        "live": live,
        **jobs_part(settings, aws_session, jobs_cache, session),
        "links": links(settings),
        "target": _with(session, lambda aws: aws.describe()),
        "settings": settings,
    }


def jobs_part(
    settings: Settings, aws_session: Callable[[], Aws], jobs_cache: jobs.Cache, session: Part | None = None
) -> dict[str, Any]:
    session = session or read(aws_session)
    return {
        "jobs": _with(session, lambda aws: jobs.list_jobs(settings, aws, limit=LISTED_JOBS, cache=jobs_cache)),
        "backlog": _with(session, lambda aws: reconcile.backlog(settings, aws)),
        "transforms": _with(session, lambda aws: batch_transform.listed_here(settings, aws, limit=LISTED_JOBS)),
    }


def _with(session: Part, load: Callable[[Aws], T]) -> Part:
    """``load(aws)`` read as a part, or the reason the session itself could not be made."""
    return read(lambda: load(session.value)) if session.value is not None else Part(error=session.error)
