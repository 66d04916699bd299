"""mlflow tracking, registry and promotion against a real tracking server and the session's emulator.

Train two versions, promote one, then the other while the API is being called, then roll back: the Lambda's output
and the API's /metadata follow, with no failed request. A version whose ONNX does not score like its pipeline is
refused. The API keeps serving when the tracking server is down.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mlops_lab import model, registry, stack, training
from mlops_lab import settings as lab_settings
from mlops_lab.contract import META_MODEL_VERSION, prediction_key
from mlops_lab.errors import ExitCode, explain
from mlops_lab.settings import Settings
from mlops_lab.train import AgreementError
from tests.support import (
    RECORD,
    Lab,
    free_port,
    isolated_environment,
    restoring_live_model,
    wait_for_output,
    wait_until,
)


@dataclass
class Versions:
    first: training.LoggedVersion
    second: training.LoggedVersion


@pytest.fixture(scope="module")
def versions(mlflow_lab: Lab) -> Versions:
    """Two registered versions from different seeds (small data: the point is the registry, not the model)."""
    first = training.train_and_log(mlflow_lab.settings, rows=3000, seed=1, run_name="seed-1")
    second = training.train_and_log(mlflow_lab.settings, rows=3000, seed=2, run_name="seed-2")
    return Versions(first, second)


def served_version(api: httpx.Client) -> str:
    return api.get("/metadata").json()["version"]


def wait_for_version(api: httpx.Client, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (current := served_version(api)) != version:
        assert time.monotonic() < deadline, f"the API still serves version {current}, not {version}"
        time.sleep(0.1)


def lambda_output_version(lab: Lab, sample_csv: Path, key: str) -> str:
    s3, settings = lab.s3(), lab.settings
    s3.delete_object(Bucket=settings.output_bucket, Key=prediction_key(key))
    s3.upload_file(str(sample_csv), settings.input_bucket, key)
    return wait_for_output(lab, prediction_key(key))["Metadata"].get(META_MODEL_VERSION, "")


# -- tracking ---------------------------------------------------------------------------------------------------


def test_run_has_metrics_params_and_artifacts_in_s3(mlflow_lab: Lab, versions: Versions) -> None:
    import mlflow

    settings = mlflow_lab.settings
    client = registry.client(settings)
    run = client.get_run(versions.first.run_id)
    assert {"accuracy", "roc_auc", "f1"} <= set(run.data.metrics)
    assert 0.6 < run.data.metrics["roc_auc"] <= 1 and 0.5 < run.data.metrics["accuracy"] <= 1
    assert run.data.params["seed"] == "1" and run.data.params["rows"] == "3000"
    # The registered version is the ONNX model, with a signature and an input example.
    info = mlflow.models.get_model_info(versions.first.model_uri)
    assert info.signature is not None and "age" in info.signature.inputs.input_names()
    assert info.saved_input_example_info is not None
    # Every artifact went through the server into the emulator's model bucket.
    pages = (
        mlflow_lab.s3()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=settings.model_bucket, Prefix=settings.mlflow_artifacts_prefix + "/")
    )
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    run_keys = [k for k in keys if versions.first.run_id in k]
    assert any(k.endswith(registry.HOLDOUT_ARTIFACT) for k in run_keys)
    for logged in (versions.first, versions.second):  # each version's own ONNX and sklearn pipeline, in S3
        tags = client.get_run(logged.run_id).data.tags
        for tag, artifact in (("lab.onnx_model_uri", "model.onnx"), ("lab.sklearn_model_uri", "model.skops")):
            location = client.get_logged_model(tags[tag].removeprefix("models:/")).artifact_location
            # mlflow-artifacts:/<experiment>/models/<id>/artifacts: served from <mlflow artifacts prefix>/<that>
            prefix = f"{settings.mlflow_artifacts_prefix}/{location.split(':/', 1)[-1].strip('/')}/"
            assert any(k.startswith(prefix) and k.endswith("/" + artifact) for k in keys), (tag, location, prefix)


def test_models_lists_versions(mlflow_lab: Lab, versions: Versions) -> None:
    rows = {row.version: row for row in registry.list_versions(mlflow_lab.settings, mlflow_lab.aws)}
    assert {versions.first.version, versions.second.version} <= set(rows)
    assert rows[versions.first.version].metrics.keys() == {"accuracy", "roc_auc", "f1"}


# -- promotion ----------------------------------------------------------------------------------------------------


def test_promote_switches_lambda_and_api_then_rolls_back(
    mlflow_lab: Lab, versions: Versions, api: httpx.Client, sample_csv: Path
) -> None:
    settings, aws = mlflow_lab.settings, mlflow_lab.aws
    first, second = versions.first.version, versions.second.version

    registry.promote(settings, aws, first)
    wait_for_version(api, first)
    assert lambda_output_version(mlflow_lab, sample_csv, "registry/a.csv") == first

    # Promote the second version while clients keep calling the API: no request may fail.
    failures: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=str(api.base_url), timeout=10) as client:
            while not stop.is_set():
                try:
                    answer = client.post("/predict", json=RECORD)
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code} {answer.text[:200]}")
                    else:
                        seen.add(answer.json()["model"]["version"])
                except httpx.HTTPError as error:
                    failures.append(repr(error))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        promotion = registry.promote(settings, aws, second)
        wait_for_version(api, second)
        deadline = time.monotonic() + 10
        while second not in seen and time.monotonic() < deadline:  # the callers got answers from the new model too
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:5]
    assert seen == {first, second}
    assert promotion.previous == first and promotion.change.action == "published"
    assert lambda_output_version(mlflow_lab, sample_csv, "registry/b.csv") == second
    metadata = api.get("/metadata").json()
    assert metadata["onnx_metadata"]["version"] == second
    assert metadata["onnx_metadata"]["run_id"] == versions.second.run_id

    # Roll back: promote the older version.
    registry.promote(settings, aws, first)
    wait_for_version(api, first)
    assert lambda_output_version(mlflow_lab, sample_csv, "registry/c.csv") == first
    rows = {row.version: row for row in registry.list_versions(settings, aws)}
    assert rows[first].live and rows[first].aliases == ["champion"]
    assert not rows[second].live and rows[second].aliases == []


def test_api_can_serve_a_registry_alias(mlflow_lab: Lab, versions: Versions) -> None:
    """LAB_API_MODEL_SOURCE=models:/<name>@champion: the API follows the alias itself (no model bucket involved)."""
    from fastapi.testclient import TestClient

    from mlops_lab.api.app import create_app

    settings, aws = mlflow_lab.settings, mlflow_lab.aws
    first, second = versions.first.version, versions.second.version
    registry.promote(settings, aws, first)
    api_settings = settings.model_copy(update={"api_model_poll_s": 0.2, "api_access_log": False})
    app = create_app(api_settings, model_source=f"models:/{settings.model_name}@champion")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        metadata = client.get("/metadata").json()
        assert (metadata["version"], metadata["source"]) == (first, f"models:/{settings.model_name}@champion")
        try:
            registry.promote(settings, aws, second)
            deadline = time.monotonic() + 30
            while client.get("/metadata").json()["version"] != second:
                assert time.monotonic() < deadline, "the API did not follow the alias"
                time.sleep(0.1)
            answer = client.post(
                "/predict",
                json=RECORD,
            )
            assert answer.status_code == 200 and answer.json()["model"]["version"] == second
        finally:
            registry.promote(settings, aws, first)
    app_by_version = create_app(api_settings, model_source=f"models:/{settings.model_name}/{second}")
    with TestClient(app_by_version, base_url="http://127.0.0.1") as client:
        assert client.get("/metadata").json()["version"] == second


def test_promoting_the_live_version_again_changes_nothing(mlflow_lab: Lab, versions: Versions) -> None:
    registry.promote(mlflow_lab.settings, mlflow_lab.aws, versions.first.version)
    again = registry.promote(mlflow_lab.settings, mlflow_lab.aws, versions.first.version)
    assert again.change.action == "unchanged"


def test_mismatching_onnx_export_is_refused(mlflow_lab: Lab, versions: Versions) -> None:
    """A version whose ONNX came from another pipeline: promote refuses, nothing changes."""
    from mlops_lab.synthetic import generate
    from mlops_lab.train import to_onnx, train

    settings, aws = mlflow_lab.settings, mlflow_lab.aws
    df = generate(2000, seed=9)
    logged_pipeline, other_pipeline = train(df, seed=9), train(df, seed=10)
    onnx_of_other = to_onnx(other_pipeline.pipeline, df)
    bad = training.log_version(
        settings,
        logged_pipeline.pipeline,
        onnx_of_other,
        logged_pipeline.holdout,
        metrics=logged_pipeline.metrics,
        run_name="mismatch",
    )
    live_before = model.live_version(settings, aws)
    etag_before = mlflow_lab.s3().head_object(Bucket=settings.model_bucket, Key=settings.model_key)["ETag"]
    with pytest.raises(AgreementError, match="disagrees"):
        registry.promote(settings, aws, bad.version)
    assert model.live_version(settings, aws) == live_before
    assert mlflow_lab.s3().head_object(Bucket=settings.model_bucket, Key=settings.model_key)["ETag"] == etag_before
    aliases = registry.client(settings).get_registered_model(settings.model_name).aliases
    assert aliases.get(registry.ALIAS) != bad.version


def test_stamp_keeps_metadata_and_changes_bytes(versions: Versions) -> None:
    from mlops_lab.inference import TabularModel

    original = versions.first.onnx_path.read_bytes()
    stamped = registry.stamp(original, version="7", run_id="abc")
    assert stamped != original and registry.stamp(original, version="7", run_id="abc") == stamped
    metadata = TabularModel(stamped).metadata
    assert metadata["version"] == "7" and metadata["run_id"] == "abc" and "classes" in metadata


# -- a tracking server the lab did not start: its scikit-learn pipelines are loaded only with trust ---------------


@pytest.fixture
def external(mlflow_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The session's tracking server seen from settings whose own server would be elsewhere (MLFLOW_TRACKING_URI,
    read at start-up, points at it): a tracking server the lab did not start."""
    monkeypatch.setattr(lab_settings, "USER_TRACKING_URI", mlflow_lab.settings.mlflow_server_url)
    settings = mlflow_lab.settings.model_copy(update={"mlflow_port": free_port()})
    assert settings.mlflow_external
    return settings


@pytest.fixture
def sklearn_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URIs promote loads a scikit-learn model from (loaded for real)."""
    import mlflow.sklearn

    loads: list[str] = []
    load = mlflow.sklearn.load_model

    def recording(uri: str) -> object:
        loads.append(uri)
        return load(uri)

    monkeypatch.setattr(mlflow.sklearn, "load_model", recording)
    return loads


def live_object(lab: Lab) -> tuple[str, dict[str, str]]:
    head = lab.s3().head_object(Bucket=lab.settings.model_bucket, Key=lab.settings.model_key)
    return head["ETag"], head["Metadata"]


def test_promoting_a_trained_version_from_an_external_server_needs_trust(
    mlflow_lab: Lab, versions: Versions, external: Settings, sklearn_loads: list[str]
) -> None:
    """Its check loads the version's pipeline (code from the artifact): refused before anything is loaded, published
    or aliased; with trust, checked and promoted as on the lab's own server."""
    aws, version = mlflow_lab.aws, versions.second.version
    mlflow_client = registry.client(mlflow_lab.settings)
    with restoring_live_model(mlflow_lab):
        registry.promote(mlflow_lab.settings, aws, versions.first.version)
        sklearn_loads.clear()  # (the lab's own server: loaded without asking)
        before = live_object(mlflow_lab)
        with pytest.raises(registry.UntrustedModel) as refused:
            registry.promote(external, aws, version)
        problem = explain(refused.value)
        assert problem.code == ExitCode.REFUSED
        assert "--trust" in problem.message and "runs code" in problem.message
        assert external.mlflow_tracking_uri in problem.message and f"models:/{external.model_name}/{version}" in (
            problem.message
        )
        assert sklearn_loads == []
        assert live_object(mlflow_lab) == before, "the live model is unchanged"
        aliases = mlflow_client.get_registered_model(external.model_name).aliases
        assert aliases[registry.ALIAS] == versions.first.version

        promoted = registry.promote(external, aws, version, trust=True)
        assert promoted.agreement is not None and len(sklearn_loads) == 1
        assert live_object(mlflow_lab)[1][META_MODEL_VERSION] == version
        registry.promote(mlflow_lab.settings, aws, versions.first.version)  # the alias back where it was


def test_an_onnx_version_needs_no_trust(
    mlflow_lab: Lab, external: Settings, sklearn_loads: list[str], trained_model_path: Path
) -> None:
    """An imported version is ONNX only: promoting it from an external server loads no scikit-learn model."""
    from mlops_lab.data import FEATURES
    from mlops_lab.synthetic import generate

    name = "trust-onnx-only"
    example = generate(5, seed=3, with_label=False)[list(FEATURES)]
    logged = training.log_imported(
        mlflow_lab.settings, name, trained_model_path.read_bytes(), example, kind="classifier", origin="test"
    )
    try:
        with restoring_live_model(mlflow_lab):
            promoted = registry.promote(external, mlflow_lab.aws, logged.version, name=name)
            assert promoted.agreement is None and sklearn_loads == []
            assert live_object(mlflow_lab)[1][META_MODEL_VERSION] == logged.version
    finally:
        registry.client(mlflow_lab.settings).delete_registered_model(name)


def test_the_promote_command_takes_trust(
    mlflow_lab: Lab, versions: Versions, external: Settings, sklearn_loads: list[str]
) -> None:
    from typer.testing import CliRunner

    from mlops_lab.cli import app

    runner, version = CliRunner(), versions.second.version
    with restoring_live_model(mlflow_lab), isolated_environment(external):
        refused = runner.invoke(app, ["promote", version, "--name", external.model_name])
        assert refused.exit_code == ExitCode.REFUSED, refused.output
        assert "--trust" in " ".join(refused.output.split()) and sklearn_loads == []
        promoted = runner.invoke(app, ["promote", version, "--name", external.model_name, "--trust"])
        assert promoted.exit_code == 0, promoted.output
        assert f"version {version} is now @champion" in " ".join(promoted.output.split())
        registry.promote(mlflow_lab.settings, mlflow_lab.aws, versions.first.version)


# -- the tracking server going away -------------------------------------------------------------------------------


def test_api_keeps_serving_when_mlflow_is_down(mlflow_lab: Lab, versions: Versions, api: httpx.Client) -> None:
    """The tracking server hangs (SIGSTOP: connections open, nothing answers): the API never notices, promote says why.

    Frozen rather than stopped so the session's server is back at once for the tests after this one.
    """
    settings = mlflow_lab.settings
    pid = stack.pid_of(settings, "mlflow")
    assert pid is not None
    # The API polls the model bucket: first let it catch up with what earlier tests made live, so a change seen
    # below is one made while mlflow was frozen.
    live = model.live_version(settings, mlflow_lab.aws)
    serving = wait_until(lambda: served_version(api) == live and live, timeout=30)
    os.killpg(pid, signal.SIGSTOP)
    try:
        assert not registry.server_reachable(settings, timeout=1)
        with pytest.raises(registry.ServerUnavailable):
            registry.promote(settings, mlflow_lab.aws, versions.second.version)
        for _ in range(5):
            assert api.get("/ready").status_code == 200
            assert (
                api.post(
                    "/invocations",
                    content=b"age,work_class,education,marital_status,occupation,relationship,"
                    b"race,sex,capital_gain,capital_loss,hours_per_week,native_country\n"
                    b"39,Private,Bachelors,Married,Professional,Husband,White,Male,0,0,40,United-States\n",
                    headers={"Content-Type": "text/csv"},
                ).status_code
                == 200
            )
        assert served_version(api) == serving
    finally:
        os.killpg(pid, signal.SIGCONT)
    assert registry.server_reachable(settings, timeout=10)


def test_train_without_a_server_still_works(tmp_path: Path) -> None:
    """`train --no-mlflow`'s path: nothing here needs the tracking server."""
    settings = Settings(state_dir=tmp_path, mlflow_port=free_port())
    assert not registry.server_reachable(settings)
    with pytest.raises(registry.ServerUnavailable):
        registry.client(settings)
