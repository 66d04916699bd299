"""Where the served model comes from, and how a newly published one replaces it without dropping requests.

The store holds one immutable :class:`Snapshot` (model + its info + its request validators). A request reads
``store.current`` once and uses that snapshot to the end, so a swap — a single reference assignment — never changes a
model under a request in flight; the old session is freed when the last request holding it finishes.

A background task (started by the app's lifespan) asks the source for a cheap fingerprint (S3 ``ETag`` via
``head_object``; a file's inode/mtime/size) every ``api_model_poll_s`` seconds, and loads, warms up and swaps only when
it changed (the lab's one :class:`~mlops_lab.model_cache.ModelCache`). Requests never touch the source. A source that
is unreachable or holds a broken model is reported (``/ready``, ``/metadata``) and retried; a model already being
served stays in service.

Sources: a file, a directory holding one ONNX model (what SageMaker mounts at ``/opt/ml/model``), an S3 object, the
mlflow registry (``resolve_source``); which one serves when none is named: ``default_model_source``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from mlops_lab.api.schemas import RecordTypes, build_record_types, example_record
from mlops_lab.contract import META_MODEL_NAME, META_MODEL_VERSION
from mlops_lab.errors import LabError
from mlops_lab.inference import Prediction, TabularModel
from mlops_lab.model_cache import ModelCache
from mlops_lab.settings import Settings

log = logging.getLogger("mlops_lab.api")

RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0

# Where SageMaker unpacks a model's data (ModelDataUrl's model.tar.gz) in an endpoint's or a transform's container.
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
# What mlflow writes beside MLmodel when it downloads a registered model (models:/...), so also into the model.tar.gz
# its SageMaker deployment uploads: the registered name and version (mlflow.store.artifact.models_artifact_repo).
REGISTERED_MODEL_META = "registered_model_meta"
MLMODEL = "MLmodel"


@dataclass(frozen=True)
class Artifact:
    data: bytes
    fingerprint: str
    version: str | None = None  # what the source says the version is (S3 object metadata), if anything
    name: str | None = None  # what the source says the model's name is, if anything


class ModelSource(Protocol):
    uri: str

    def fingerprint(self) -> str:
        """Cheap: changes whenever the model behind the source changes."""
        ...

    def fetch(self) -> Artifact: ...


class FileSource:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.uri = str(self.path.resolve()) if self.path.exists() else str(self.path)

    def fingerprint(self) -> str:
        st = os.stat(self.path)
        return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"

    def fetch(self) -> Artifact:
        for _ in range(3):  # a writer replacing the file in place: read again until the stat is stable
            before = self.fingerprint()
            data = self.path.read_bytes()
            if self.fingerprint() == before:
                return Artifact(data, before)
            time.sleep(0.05)
        raise RuntimeError(f"{self.path} keeps changing while being read")


class ModelDirectoryError(LabError):
    """A model directory that does not hold exactly one ONNX file."""


class DirectorySource:
    """A directory holding one ONNX model: an extracted SageMaker ``model.tar.gz`` (``/opt/ml/model``), an mlflow
    model directory (the lab's registered models keep theirs in ``artifacts/model.onnx``) or a folder with a
    ``model.onnx``.

    The model is the one ``.onnx`` file anywhere under the directory (none or several is an error naming the
    directory: which one SageMaker meant cannot be guessed). Its name and version, when the ONNX file does not carry
    them, come from mlflow's ``registered_model_meta`` (written when a registered model is downloaded, so it is in
    the tarball mlflow deploys), else from the ``metadata`` of the ``MLmodel`` file. The fingerprint is the ONNX
    file's path and stat plus those files' stats: one directory walk, no reading.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.uri = str(self.path.resolve()) if self.path.exists() else str(self.path)

    def model_file(self) -> Path:
        if not self.path.is_dir():
            raise ModelDirectoryError(f"model directory {self.path} does not exist (or is not a directory)")
        found = []
        for folder, _, files in os.walk(self.path):  # (symlinked folders are not followed: no loops)
            found += [Path(folder, name) for name in files if name.lower().endswith(".onnx")]
        if not found:
            raise ModelDirectoryError(
                f"no .onnx file in model directory {self.path}: expected one ONNX model (a model.onnx, an mlflow "
                "model directory, or an extracted model.tar.gz holding one)"
            )
        if len(found) > 1:
            names = ", ".join(sorted(str(file.relative_to(self.path)) for file in found))
            raise ModelDirectoryError(
                f"{len(found)} .onnx files in model directory {self.path} ({names}): keep the one to serve"
            )
        return found[0]

    def fingerprint(self) -> str:
        return self._fingerprint(self.model_file())

    def _fingerprint(self, model: Path) -> str:
        parts = [f"{model.relative_to(self.path)}:{_stat_key(model)}"]
        for name in (REGISTERED_MODEL_META, MLMODEL):
            with contextlib.suppress(FileNotFoundError):
                parts.append(f"{name}:{_stat_key(self.path / name)}")
        return "|".join(parts)

    def fetch(self) -> Artifact:
        model = self.model_file()
        for _ in range(3):  # a model being unpacked or replaced in place: read again until the stats are stable
            before = self._fingerprint(model)
            data = model.read_bytes()
            name, version = directory_identity(self.path)
            if self._fingerprint(model) == before:
                return Artifact(data, before, version, name)
            time.sleep(0.05)
        raise RuntimeError(f"{self.path} keeps changing while being read")


def _stat_key(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


def directory_identity(path: Path) -> tuple[str | None, str | None]:
    """``(name, version)`` of the model in an mlflow model directory, each None when it does not say."""
    name = version = None
    with contextlib.suppress(FileNotFoundError, UnicodeDecodeError):
        meta = _yaml_mapping((path / REGISTERED_MODEL_META).read_text("utf-8"))
        name, version = meta.get("model_name"), meta.get("model_version")
    if name is None or version is None:
        with contextlib.suppress(FileNotFoundError, UnicodeDecodeError):
            metadata = _yaml_mapping((path / MLMODEL).read_text("utf-8"), section="metadata")
            name = name or metadata.get("model_name") or metadata.get(META_MODEL_NAME)
            version = version or metadata.get("model_version") or metadata.get(META_MODEL_VERSION)
    return name or None, version or None


def _yaml_mapping(text: str, section: str | None = None) -> dict[str, str]:
    """The scalar ``key: value`` entries of a YAML mapping's top level, or of one top-level ``section`` (as mlflow
    writes YAML: two-space indents). Enough for mlflow's two small files; the API image has no YAML parser (and needs
    none for anything else). Nested values, lists and block scalars are skipped, not misread."""
    entries: dict[str, str] = {}
    parent = None  # the top-level key the line is under
    for line in text.splitlines():
        depth = len(line) - len(line.lstrip(" "))
        parent = line.strip().removesuffix(":") if depth == 0 else parent
        if depth != (0 if section is None else 2) or (section is not None and parent != section):
            continue
        key, colon, value = line.strip().partition(": ")
        value = value.strip()
        if not colon or not value or value[0] in "|>[{&*!#":
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        entries[key] = value
    return entries


class S3Source:
    def __init__(self, bucket: str, key: str) -> None:
        self.bucket, self.key = bucket, key
        self.uri = f"s3://{bucket}/{key}"
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from botocore.config import Config

            from mlops_lab.aws import default_session  # the SDK's own configuration, AWS_REGION included

            config = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
            self._client = default_session().client("s3", config=config)
        return self._client

    def fingerprint(self) -> str:
        return self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"].strip('"')

    def fetch(self) -> Artifact:
        response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        data = response["Body"].read()
        metadata = response.get("Metadata") or {}
        version = metadata.get("version") or metadata.get(META_MODEL_VERSION)
        return Artifact(data, response["ETag"].strip('"'), version, metadata.get(META_MODEL_NAME))


class RegistrySource:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` on the lab's mlflow tracking server.

    The fingerprint is the version the reference resolves to (one registry call), so moving the alias swaps the model;
    the ONNX file is the one registered with that version, downloaded through the server (served artifacts: no S3
    credentials needed). Needs mlflow in this environment (the embedded API has it; the API image does not).
    """

    def __init__(self, uri: str, tracking_uri: str) -> None:
        reference = uri.removeprefix("models:/")
        name, alias_sep, alias = reference.partition("@")
        if not alias_sep:
            name, _, alias = reference.partition("/")
        if not name or not alias or "/" in alias:
            raise ValueError(f"model source {uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
        self.uri, self.name, self.tracking_uri = uri, name, tracking_uri
        self.alias = alias if alias_sep else None
        self.version = None if alias_sep else alias
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from mlflow import MlflowClient
            except ImportError:
                raise RuntimeError(f"model source {self.uri!r} needs mlflow (pip install mlflow==3.17.2)") from None
            self._client = MlflowClient(self.tracking_uri, self.tracking_uri)
        return self._client

    def resolved_version(self) -> str:
        if self.alias is None:
            return str(self.client.get_model_version(self.name, self.version).version)
        return str(self.client.get_model_version_by_alias(self.name, self.alias).version)

    def fingerprint(self) -> str:
        return f"{self.name}/{self.resolved_version()}"

    def fetch(self) -> Artifact:
        from mlops_lab.registry import registered_onnx  # (imports mlflow, which only this source needs)

        version = self.resolved_version()
        data = registered_onnx(self.name, version, self.tracking_uri)
        return Artifact(data, f"{self.name}/{version}", version, self.name)


def resolve_source(spec: str | Path | ModelSource, settings: Settings) -> ModelSource:
    """``"s3"`` → the model bucket/key bootstrap publishes; ``s3://bucket/key``; ``models:/name@alias`` (or
    ``models:/name/version``) → the mlflow registry; an existing directory → the one ONNX model in it; anything else
    is a file path."""
    if not isinstance(spec, str | Path):
        return spec
    text = str(spec)
    if text == "s3":
        return S3Source(settings.model_bucket, settings.model_key)
    if text.startswith("s3://"):
        bucket, _, key = text.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise ValueError(f"model source {text!r}: expected s3://bucket/key")
        return S3Source(bucket, key)
    if text.startswith("models:/"):
        return RegistrySource(text, settings.mlflow_tracking_uri)
    if Path(text).expanduser().is_dir():
        return DirectorySource(text)
    return FileSource(text)


def in_sagemaker_container(environ: Mapping[str, str], model_dir: Path | None = None) -> bool:
    """A SageMaker transform container (``SAGEMAKER_BATCH=true``) or any container SageMaker gave model data."""
    model_dir = SAGEMAKER_MODEL_DIR if model_dir is None else model_dir
    return environ.get("SAGEMAKER_BATCH", "").strip().lower() == "true" or model_dir.is_dir()


def default_model_source(settings: Settings, environ: Mapping[str, str], model_dir: Path | None = None) -> str | Path:
    """The source when none is passed: ``LAB_API_MODEL_SOURCE`` when it is set; else, inside a SageMaker
    container, the model data SageMaker unpacked (``/opt/ml/model``); else ``s3`` (the model bucket)."""
    model_dir = SAGEMAKER_MODEL_DIR if model_dir is None else model_dir
    if "api_model_source" in settings.model_fields_set:
        return settings.api_model_source
    if in_sagemaker_container(environ, model_dir):
        return model_dir
    return settings.api_model_source


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    source: str
    fingerprint: str
    sha256: str
    loaded_at: str
    kind: str  # inference.CLASSIFIER or inference.REGRESSOR
    classes: tuple[str, ...]
    inputs: list[dict[str, Any]]
    onnx_metadata: dict[str, str]


@dataclass(frozen=True, eq=False)
class Snapshot:
    model: TabularModel
    info: ModelInfo
    types: RecordTypes
    feature_names: tuple[str, ...]
    ref: dict[str, str] = field(default_factory=dict)  # {"name", "version"}, ready to serialise
    # The model's answer to the example record (types.schema["example"]): the docs' response examples.
    example: Prediction | None = None


def build_snapshot(artifact: Artifact, *, source: str, name: str, max_rows: int, threads: int | None) -> Snapshot:
    """Load, warm up and describe a model. Its identity is its own: the ONNX metadata's ``model_name`` and
    ``version`` (``model_version`` in older exports), else what the source says (S3 object metadata, the registry),
    else ``name`` (the configured one) and the file's digest."""
    model = TabularModel(artifact.data, threads=threads)
    types = build_record_types(model.features, max_rows)
    # Warm up (first ORT run allocates) and learn the class names before the first request needs them.
    warm_up = model.predict_records([example_record(model.features)])
    sha = hashlib.sha256(artifact.data).hexdigest()
    meta = model.metadata
    version = meta.get("version") or meta.get("model_version") or artifact.version or sha[:12]
    name = meta.get("model_name") or artifact.name or name
    info = ModelInfo(
        name=name,
        version=str(version),
        source=source,
        fingerprint=artifact.fingerprint,
        sha256=sha,
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        kind=model.kind,
        classes=tuple(model.classes),
        inputs=model.schema(),
        onnx_metadata=dict(meta),
    )
    ref = {"name": info.name, "version": info.version}
    return Snapshot(model, info, types, tuple(model.feature_names), ref, warm_up)


class ModelStore:
    def __init__(
        self, source: ModelSource, *, name: str, max_rows: int, poll_s: float, threads: int | None = 1
    ) -> None:
        self.source = source
        self.name = name
        self.max_rows = max_rows
        self.poll_s = poll_s
        self.threads = threads  # one ORT thread per session: requests, not one row, are the unit of parallelism
        # What requests read: a plain attribute (the hot path reads it once per request), set only by check().
        self.current: Snapshot | None = None
        self.last_error: str | None = None
        self.swaps = 0
        self._snapshots: ModelCache[Snapshot] = ModelCache()
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self.current is not None

    def check(self) -> bool:
        """Blocking: load the model if the source changed. True when a new snapshot was swapped in."""
        try:
            snapshot = self._snapshots.get(self.source.fingerprint(), self._load)
        except Exception as exc:  # unreachable source, missing object, half-written or invalid model
            message = f"{type(exc).__name__}: {exc}"
            if message != self.last_error:
                log.warning("model source %s: %s", self.source.uri, message)
            self.last_error = message
            return False
        self.last_error = None
        if snapshot is self.current:
            return False
        self.current = snapshot  # the swap: one reference assignment
        self.swaps += 1
        log.info("serving model %s version %s from %s", snapshot.info.name, snapshot.info.version, snapshot.info.source)
        return True

    def _load(self) -> Snapshot:
        artifact = self.source.fetch()
        current = self.current
        # The source can change between the fingerprint and the fetch: what it returned may be what is served already.
        if current is not None and artifact.fingerprint == current.info.fingerprint:
            return current
        return build_snapshot(
            artifact, source=self.source.uri, name=self.name, max_rows=self.max_rows, threads=self.threads
        )

    async def refresh(self) -> bool:
        async with self._lock:
            return await asyncio.to_thread(self.check)

    async def run(self, first_attempt: asyncio.Event | None = None) -> None:
        """Load, then poll for a new model until cancelled; retry with backoff while nothing is loaded."""
        delay = RETRY_MIN_S
        while True:
            await self.refresh()
            if first_attempt is not None:
                first_attempt.set()
                first_attempt = None
            if self.current is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if self.poll_s <= 0:
                return
            await asyncio.sleep(self.poll_s)
