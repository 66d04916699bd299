"""mlflow's tracking server and registry: the server, its client, whose entries are the lab's, promotion, versions.

Logging and registering new versions is beside it, in ``mlops_lab.training``.

- ``promote``: re-check a version's ONNX against its own sklearn pipeline on its own holdout (refuse on mismatch;
  loading that pipeline runs code from its artifact, so from a tracking server the lab did not start only with
  ``trust``: ``check_trusted``), stamp the registry version into the ONNX metadata (``version``, ``model_name``, ``run_id``: new bytes, new ETag),
  publish it to the model bucket (the Lambda reloads on the ETag, the API hot-swaps on its poll) and point the
  ``champion`` alias at it. Rolling back is promoting an older version.
- ``list_versions``: versions, their aliases and metrics, and which one the model bucket serves right now.

Clients talk to the tracking server only (served artifacts: the server writes to S3), so they need no S3 credentials
for mlflow; publishing the model needs the lab's AWS access as before.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from mlops_lab import model
from mlops_lab.aws import Aws, Change
from mlops_lab.contract import META_MODEL_NAME, META_MODEL_VERSION
from mlops_lab.errors import ExitCode, Refused
from mlops_lab.settings import PREFIX_TAG, Settings
from mlops_lab.stack import Service

ALIAS = "champion"
SOURCE_TAG = "lab.source"  # on a model version: how it came to the registry
IMPORTED = "import"  # `mlops-lab publish`: a user's own model, checked on sample rows (not trained here)
LISTED_METRICS = ("accuracy", "roc_auc", "f1")
ONNX_MODEL = "onnx-model"  # the registered pyfunc (ONNX + the inference core)
SKLEARN_MODEL = "sklearn-model"  # the pipeline the ONNX was exported from (agreement checks)
HOLDOUT_ARTIFACT = "holdout/holdout.parquet"
# The pipeline is saved with skops (mlflow's safe default); these two are what a random forest adds to its allow-list.
SKOPS_TRUSTED_TYPES = ["numpy.dtype", "sklearn.tree._tree.Tree"]
PYFUNC_CODE = Path(__file__).with_name("onnx_pyfunc.py")
INFERENCE_CODE = Path(__file__).with_name("inference.py")

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


class RegistryError(Refused):
    """A registry entry the lab will not promote or read (no such version, no ONNX in it...)."""


class ServerUnavailable(RegistryError):
    """The tracking server does not answer."""

    exit_code = ExitCode.NOT_RUNNING


class UntrustedModel(RegistryError):
    """A scikit-learn model from a tracking server the lab did not start, without ``--trust``."""


TRUST_FLAG = "--trust"


def check_trusted(
    settings: Settings,
    uri: str,
    trust: bool,
    *,
    otherwise: str = "export the model to ONNX and publish the .onnx file (no code runs)",
) -> None:
    """UntrustedModel unless loading ``uri``'s scikit-learn model is a risk the user took: it comes from the lab's own
    tracking server, or ``trust`` (`publish --trust`, `promote --trust`) says so. ``otherwise``: what else to do."""
    if trust or not settings.mlflow_external:
        return
    raise UntrustedModel(
        f"{uri} is a scikit-learn model on {settings.mlflow_tracking_uri}, a tracking server the lab did not start "
        "(MLFLOW_TRACKING_URI): loading it runs code from its artifact (pickle or skops), with your permissions. "
        f"Pass {TRUST_FLAG} if you trust everyone who can write to that server; or {otherwise}"
    )


# -- the tracking server -----------------------------------------------------------------------------------------

SERVICE_NAME = "mlflow"


def server_service(settings: Settings, sdk: Mapping[str, str] = {}) -> Service:
    """The mlflow tracking server: backend store from settings, artifacts proxied into the model bucket on S3 (the
    one ``sdk``'s variables point at, else this process's). Behind the lab's guard (``python -m mlops_lab.guard
    mlflow``: `mlflow server` whose uvicorn serves its app wrapped; docs/using.md), with mlflow's own Host and
    CORS options set to the lab's values as well."""
    from mlops_lab import emulator, guard  # the guard's configuration is the emulator's too

    aws = Aws()
    endpoint = sdk.get("AWS_ENDPOINT_URL") or (None if aws.on_aws else aws.endpoint_url)  # spelled out for its S3
    hosts = ["*"] if "*" in settings.allowed_hosts else guard.lab_hosts(settings) + list(guard.LOOPBACK_NAMES)
    # mlflow's --allowed-hosts takes fnmatch patterns: each name with any port ("[" escaped as "[[]").
    patterns = [pattern for host in dict.fromkeys(hosts) for pattern in (host, host.replace("[", "[[]", 1) + ":*")]
    return Service(
        name=SERVICE_NAME,
        command=[
            sys.executable,
            "-m",
            "mlops_lab.guard",
            "mlflow",
            "--host",
            settings.mlflow_host,
            "--port",
            str(settings.mlflow_port),
            "--workers",
            "1",
            "--backend-store-uri",
            settings.mlflow_backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            settings.mlflow_artifacts_destination,
            "--allowed-hosts",
            "*" if hosts == ["*"] else ",".join(patterns),
            "--cors-allowed-origins",
            ",".join(guard.lab_origins(settings)),
        ],
        health_url=settings.mlflow_server_url + "/health",
        # The server, not its clients, writes artifacts to S3: it gets the lab's SDK variables (emulator or AWS).
        # No job runner: it serves GenAI jobs the lab does not use, and costs a huey pool and start-up time.
        env={
            **os.environ,
            **sdk,
            **emulator.guard_environment(settings),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **({"MLFLOW_S3_ENDPOINT_URL": endpoint} if endpoint else {}),
        },
        description=f"mlflow tracking + registry (artifacts in {settings.mlflow_artifacts_destination})",
        url=settings.mlflow_server_url,
    )


# -- connection -------------------------------------------------------------------------------------------------


def server_reachable(settings: Settings, timeout: float = 2) -> bool:
    """Does the tracking server answer its health check (with mlflow's own auth variables, if they are set)?"""
    try:
        response = httpx.get(
            settings.mlflow_tracking_uri.rstrip("/") + "/health",
            timeout=timeout,
            auth=_basic_auth(),
            headers=_token_header(),
            verify=os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true",
        )
        return response.status_code == 200
    except httpx.HTTPError:
        return False


def _basic_auth() -> tuple[str, str] | None:
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return (user, password) if user and password else None


def _token_header() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(settings: Settings, *, check: bool = True):  # type: ignore[no-untyped-def]
    """An MlflowClient on the lab's tracking server (also sets mlflow's global tracking/registry URI)."""
    import mlflow
    from mlflow import MlflowClient

    if check and not server_reachable(settings):
        raise ServerUnavailable(
            f"the mlflow tracking server does not answer at {settings.mlflow_tracking_uri}: start it with `mlops-lab up`"
        )
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)


# -- whose entries these are: teardown deletes what the lab made, and only that ----------------------------------------
# The lab tags what it creates with its prefix: every model version it registers, and a registered model or an
# experiment only when it created it. A tracking server may be shared: publishing into someone's registered model adds
# a version (tagged) and leaves the model untagged, so teardown removes that version and keeps the model.


def experiment(settings: Settings, mlflow_client: Any, name: str) -> Any:
    """The experiment ``name`` made active (mlflow.set_experiment); tagged as the lab's when this call creates it."""
    import mlflow

    existed = mlflow_client.get_experiment_by_name(name) is not None
    active = mlflow.set_experiment(name)
    if not existed:
        mlflow_client.set_experiment_tag(active.experiment_id, PREFIX_TAG, settings.prefix)
    return active


def prepare_registered_model(settings: Settings, mlflow_client: Any, name: str) -> None:
    """Create the registered model ``name``, tagged as the lab's, unless it exists (then it stays as it is)."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(name, tags={PREFIX_TAG: settings.prefix})
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def claim_version(settings: Settings, mlflow_client: Any, name: str, version: str) -> None:
    mlflow_client.set_model_version_tag(name, version, PREFIX_TAG, settings.prefix)


def delete_tagged(settings: Settings) -> list[Change]:
    """Delete the model versions, registered models and experiments the lab made under this prefix on the tracking
    server (their artifacts are in the model bucket teardown deletes); a registered model the lab made that still
    holds versions it did not make is kept. mlflow keeps a deleted experiment's name taken, so each is renamed first
    and a later `train` can use the name again."""
    mlflow_client = client(settings)
    where = f"tags.`{PREFIX_TAG}` = '{settings.prefix}'"
    changes = []
    versions = _all_pages(mlflow_client.search_model_versions, filter_string=where)
    for version in versions:
        mlflow_client.delete_model_version(version.name, version.version)
    for name in sorted({version.name for version in versions}):
        count = sum(version.name == name for version in versions)
        changes.append(Change("model versions", name, "deleted", f"{count} made by the lab"))
    for registered in _all_pages(mlflow_client.search_registered_models, filter_string=where):
        left = len(mlflow_client.search_model_versions(f"name = '{registered.name}'"))
        if left:
            changes.append(
                Change("registered model", registered.name, "not ours", f"kept: {left} version(s) of others")
            )
            continue
        mlflow_client.delete_registered_model(registered.name)
        changes.append(Change("registered model", registered.name, "deleted"))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for experiment in _all_pages(mlflow_client.search_experiments, filter_string=where):
        mlflow_client.rename_experiment(experiment.experiment_id, f"{experiment.name} (deleted {stamp})")
        mlflow_client.delete_experiment(experiment.experiment_id)
        changes.append(Change("experiment", experiment.name, "deleted", "its runs too (`mlflow gc` purges them)"))
    return changes or [Change("registry", f"entries tagged {PREFIX_TAG}={settings.prefix}", "absent")]


def _all_pages(search: Callable[..., Any], **kwargs: Any) -> list[Any]:
    items, token = [], None
    while True:
        page = search(page_token=token, **kwargs)
        items += list(page)
        token = page.token
        if not token:
            return items


# -- promote ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    previous: str | None  # the version published before (from the model object's metadata), if any
    change: Change  # the model bucket publish
    agreement: Any  # train.AgreementReport


def stamp(onnx_bytes: bytes, **properties: str) -> bytes:
    """The ONNX model with ``properties`` merged into its metadata_props (others kept; deterministic bytes)."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    props = {p.key: p.value for p in proto.metadata_props} | {k: str(v) for k, v in properties.items()}
    onnx.helper.set_model_props(proto, props)
    return proto.SerializeToString()


def version_onnx(settings: Settings, version: str | int, name: str | None = None) -> bytes:
    """The ONNX file registered as ``version`` of ``name`` (default: the demo model), through the tracking server."""
    client(settings)
    return registered_onnx(name or settings.model_name, version, settings.mlflow_tracking_uri)


def registered_onnx(name: str, version: str | int, tracking_uri: str) -> bytes:
    """The ONNX file of model version ``name``/``version``, through the server at ``tracking_uri`` (no reachability
    check: the API's registry source calls this from its poll loop, which reports and retries failures itself)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="mlops-lab-version-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp, tracking_uri=tracking_uri)
        )
        found = sorted(local.rglob("*.onnx"))
        if not found:
            raise RegistryError(f"version {version} of {name} holds no .onnx file")
        return found[0].read_bytes()


def served_name(settings: Settings, aws: Aws | None) -> str:
    """The registered model the CLI's `promote` and `models` work on by default: the live model's, else the demo's."""
    return (model.live_name(settings, aws) if aws is not None else None) or settings.model_name


def promote(
    settings: Settings,
    aws: Aws,
    version: str | int,
    *,
    name: str | None = None,
    check: bool = True,
    trust: bool = False,
) -> Promotion:
    """Verify, stamp and publish ``version`` of ``name`` (default: the demo model's) and make it the ``champion``. A
    version trained by the lab is checked against its sklearn pipeline on its holdout (AgreementError on a mismatch);
    an imported one (ONNX only) was checked on its sample when `publish` registered it. Loading the pipeline runs code
    from its artifact: from a tracking server the lab did not start, only with ``trust`` (UntrustedModel otherwise,
    before anything is published)."""
    import mlflow.sklearn
    import pandas as pd

    from mlops_lab.train import check_agreement

    mlflow_client = client(settings)
    name = name or settings.model_name
    version = str(version)
    model_version = get_version(mlflow_client, name, version)
    run_id = model_version.run_id
    onnx_bytes = version_onnx(settings, version, name)
    report = None
    imported = (model_version.tags or {}).get(SOURCE_TAG) == IMPORTED
    if check and not imported:
        sklearn_uri = (model_version.tags or {}).get("sklearn_model_uri") or mlflow_client.get_run(
            run_id
        ).data.tags.get("lab.sklearn_model_uri")
        if not sklearn_uri:
            raise RegistryError(f"version {version} has no sklearn model to check its ONNX export against")
        check_trusted(
            settings,
            sklearn_uri,
            trust,
            otherwise=f"publish its ONNX unchecked, as a new version: `mlops-lab publish models:/{name}/{version}`",
        )
        pipeline = mlflow.sklearn.load_model(sklearn_uri)  # runs code from the artifact (skops' declared types)
        with tempfile.TemporaryDirectory(prefix="mlops-lab-holdout-") as tmp:
            holdout = pd.read_parquet(
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=HOLDOUT_ARTIFACT, dst_path=tmp)
            )
        report = check_agreement(pipeline, onnx_bytes, holdout)  # raises AgreementError: nothing published
    stamped = stamp(onnx_bytes, version=version, model_name=name, run_id=run_id)
    live = model.published_metadata(settings, aws) or {}
    previous = live.get(META_MODEL_VERSION)
    if previous and live.get(META_MODEL_NAME, name) != name:
        previous = f"{live[META_MODEL_NAME]} {previous}"
    change = model.publish(settings, aws, stamped, version=version, run_id=run_id, name=name)
    mlflow_client.set_registered_model_alias(name, ALIAS, version)
    mlflow_client.set_model_version_tag(name, version, "promoted_at", datetime.now(UTC).isoformat(timespec="seconds"))
    return Promotion(name, version, previous, change, report)


def get_version(mlflow_client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version(name, version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RegistryError(f"{name} has no version {version!r} (`mlops-lab models` lists them)") from None
        raise


# -- list ---------------------------------------------------------------------------------------------------------


@dataclass
class VersionRow:
    version: str
    run_id: str
    created: str
    aliases: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    live: bool = False


def list_versions(settings: Settings, aws: Aws | None = None, *, name: str | None = None) -> list[VersionRow]:
    """The versions of ``name`` (default: the demo model's), newest first, and which one is live."""
    mlflow_client = client(settings)
    name = name or settings.model_name
    live_metadata = (model.published_metadata(settings, aws) or {}) if aws is not None else {}
    live = live_metadata.get(META_MODEL_VERSION) if live_metadata.get(META_MODEL_NAME, name) == name else None
    from mlflow.exceptions import MlflowException

    try:
        registered = mlflow_client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []  # nothing trained (with mlflow) yet
        raise
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in mlflow_client.search_model_versions(f"name = '{name}'"):
        run = mlflow_client.get_run(mv.run_id)
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds")
        metrics = {k: v for k, v in run.data.metrics.items() if k in LISTED_METRICS}
        rows.append(
            VersionRow(
                str(mv.version),
                mv.run_id,
                created,
                sorted(aliases.get(str(mv.version), [])),
                metrics,
                live == str(mv.version),
            )
        )
    return sorted(rows, key=lambda r: int(r.version), reverse=True)
