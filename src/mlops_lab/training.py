"""Training beside the registry: train the demo model, export and verify it, log the run and register a version;
log a user's own ONNX model as a version too (`publish`).

- ``train``: what `mlops-lab train` does: with the tracking server, ``train_and_log`` (and promote when asked);
  without it, train, export and publish the ONNX file straight to the model bucket.
- ``train_and_log``: train, export to ONNX, check agreement, then log one run (params; accuracy, ROC AUC, F1 on the
  holdout; the sklearn pipeline; the holdout rows; the ONNX model as a pyfunc with signature + input example) and
  register it as a new version of ``settings.model_name``.
- ``log_imported``: a user's ONNX model as a version of its own registered model.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_lab import model, registry
from mlops_lab.aws import Aws, Change
from mlops_lab.settings import Settings


@dataclass(frozen=True)
class LoggedVersion:
    name: str
    version: str
    run_id: str
    metrics: dict[str, float | int]
    model_uri: str  # models:/<name>/<version>
    onnx_path: Path  # the local copy (settings.model_path)


def train_and_log(
    settings: Settings, data_path: Path | None = None, *, rows: int = 20000, seed: int = 42, run_name: str | None = None
) -> LoggedVersion:
    """Train on ``data_path`` (or ``rows`` generated rows), export + verify ONNX, write it locally, log and register."""
    from mlops_lab.train import train_verified, write_atomically

    verified = train_verified(data_path, rows=rows, seed=seed)  # raises AgreementError
    result, onnx_bytes, agreement = verified.result, verified.onnx_bytes, verified.agreement
    write_atomically(settings.model_path, onnx_bytes)
    params = {
        "rows": verified.rows,
        "seed": seed,
        "training_data": verified.source,
        "sha256_of_training_data": verified.data_sha256,
        "holdout_share": 0.2,
    }
    params |= {
        f"rf_{k}": v
        for k, v in result.pipeline.named_steps["classifier"].get_params().items()
        if k in ("n_estimators", "max_depth", "min_samples_leaf", "random_state")
    }
    return log_version(
        settings,
        result.pipeline,
        onnx_bytes,
        result.holdout,
        metrics=dict(result.metrics),
        params=params,
        extra_metrics={"onnx_max_probability_diff": agreement.max_probability_diff},
        run_name=run_name,
        onnx_path=settings.model_path,
    )


def log_version(
    settings: Settings,
    pipeline: Any,
    onnx_bytes: bytes,
    holdout: Any,  # pandas.DataFrame: features + label
    *,
    metrics: dict[str, float | int],
    params: dict[str, Any] | None = None,
    extra_metrics: dict[str, float] | None = None,
    run_name: str | None = None,
    onnx_path: Path | None = None,
) -> LoggedVersion:
    """Log one run (params, metrics, sklearn pipeline, holdout, ONNX pyfunc) and register a version of the model.

    Does not check ONNX/sklearn agreement: ``train_and_log`` does before calling this, ``promote`` does again.
    """
    import mlflow
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature

    from mlops_lab.data import FEATURES, NUMERIC
    from mlops_lab.inference import PREDICTION_COLUMN, TabularModel, probability_column

    mlflow_client = registry.client(settings)
    registry.experiment(settings, mlflow_client, settings.mlflow_experiment)
    registry.prepare_registered_model(settings, mlflow_client, settings.model_name)
    example = holdout[list(FEATURES)].dropna().head(5).copy()
    example[list(NUMERIC)] = example[list(NUMERIC)].astype("float64")
    scored = TabularModel(onnx_bytes).predict({c: example[c].tolist() for c in FEATURES})
    output = {PREDICTION_COLUMN: scored.labels.astype(str)} | {
        probability_column(c): scored.probabilities[:, i].astype("float64") for i, c in enumerate(scored.classes)
    }
    signature = infer_signature(example, pd.DataFrame(output))
    with tempfile.TemporaryDirectory(prefix="mlops-lab-log-") as tmp, mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"lab.model_name": settings.model_name, "lab.onnx_opset": "18"})
        if params:
            mlflow.log_params(params)
        mlflow.log_metrics({k: float(v) for k, v in {**metrics, **(extra_metrics or {})}.items()})
        _log_evaluation(pipeline, holdout)
        sklearn_info = mlflow.sklearn.log_model(
            pipeline,
            name=registry.SKLEARN_MODEL,
            signature=infer_signature(example, scored.labels.astype(str)),
            input_example=example,
            skops_trusted_types=registry.SKOPS_TRUSTED_TYPES,
            pip_requirements=_requirements("mlflow", "scikit-learn", "skops", "numpy", "pandas"),
        )
        holdout_file = Path(tmp) / "holdout.parquet"
        holdout.to_parquet(holdout_file, index=False)
        mlflow.log_artifact(str(holdout_file), artifact_path=str(Path(registry.HOLDOUT_ARTIFACT).parent))
        onnx_info = _log_onnx_pyfunc(
            Path(tmp),
            onnx_bytes,
            signature=signature,
            example=example,
            name=settings.model_name,
            metadata={"format": "onnx", "sklearn_model_uri": sklearn_info.model_uri},
        )
        mlflow.set_tag("lab.sklearn_model_uri", sklearn_info.model_uri)
        mlflow.set_tag("lab.onnx_model_uri", onnx_info.model_uri)
    version = str(onnx_info.registered_model_version)
    registry.claim_version(settings, mlflow_client, settings.model_name, version)
    mlflow_client.set_model_version_tag(settings.model_name, version, "sklearn_model_uri", sklearn_info.model_uri)
    return LoggedVersion(
        settings.model_name,
        version,
        run.info.run_id,
        dict(metrics),
        f"models:/{settings.model_name}/{version}",
        onnx_path or Path(),
    )


def _log_evaluation(pipeline: Any, holdout: Any) -> None:
    """ROC, precision-recall, confusion matrix and calibration plots on the holdout, into the active run
    (mlops_lab.evaluation), so mlflow's run comparison shows curves and not only three numbers."""
    from mlops_lab.data import LABEL
    from mlops_lab.evaluation import log_classifier_evaluation
    from mlops_lab.train import _features

    if LABEL in holdout.columns and hasattr(pipeline, "predict_proba"):
        log_classifier_evaluation(pipeline, _features(holdout), holdout[LABEL])


def log_imported(
    settings: Settings, name: str, onnx_bytes: bytes, example: Any, *, kind: str, origin: str
) -> LoggedVersion:
    """Log a user's own ONNX model (as the lab's ONNX pyfunc: the same core scores it everywhere) with a signature
    and an input example, in an experiment named after it, and register it as a new version of ``name``."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from mlops_lab.inference import PREDICTION_COLUMN, TabularModel, probability_column

    mlflow_client = registry.client(settings)
    registry.experiment(settings, mlflow_client, name)
    registry.prepare_registered_model(settings, mlflow_client, name)
    scored = TabularModel(onnx_bytes).predict({c: example[c].tolist() for c in example.columns})
    output = {PREDICTION_COLUMN: scored.labels if kind == "regressor" else scored.labels.astype(str)} | {
        probability_column(c): scored.probabilities[:, i].astype("float64") for i, c in enumerate(scored.classes)
    }
    with (
        tempfile.TemporaryDirectory(prefix="mlops-lab-import-") as tmp,
        mlflow.start_run(run_name=f"publish {name}") as run,
    ):
        mlflow.set_tags(
            {"lab.model_name": name, "lab.kind": kind, "lab.origin": origin, registry.SOURCE_TAG: registry.IMPORTED}
        )
        info = _log_onnx_pyfunc(
            Path(tmp),
            onnx_bytes,
            signature=infer_signature(example, pd.DataFrame(output)),
            example=example,
            name=name,
            metadata={"format": "onnx", "kind": kind, "origin": origin},
        )
    version = str(info.registered_model_version)
    registry.claim_version(settings, mlflow_client, name, version)
    mlflow_client.set_model_version_tag(name, version, registry.SOURCE_TAG, registry.IMPORTED)
    return LoggedVersion(name, version, run.info.run_id, {}, f"models:/{name}/{version}", Path())


def _log_onnx_pyfunc(
    folder: Path, onnx_bytes: bytes, *, signature: Any, example: Any, name: str, metadata: dict[str, str]
) -> Any:
    """Log the ONNX file as the lab's pyfunc (its inference core inside) in the active run; register it as ``name``."""
    import mlflow

    onnx_file = folder / "model.onnx"
    onnx_file.write_bytes(onnx_bytes)
    return mlflow.pyfunc.log_model(
        name=registry.ONNX_MODEL,
        python_model=str(registry.PYFUNC_CODE),
        artifacts={"onnx": str(onnx_file)},
        code_paths=[str(registry.INFERENCE_CODE)],
        signature=signature,
        input_example=example,
        pip_requirements=_requirements("mlflow", "numpy", "onnxruntime", "pandas"),
        registered_model_name=name,
        metadata=metadata,
    )


def _requirements(*names: str) -> list[str]:
    """Pinned to what is installed here (explicit: mlflow's own inference of them runs a slow subprocess)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in names]


@dataclass(frozen=True)
class Trained:
    """What `train` did: always metrics and the local ONNX file; a registry version when mlflow was used; the
    promotion (mlflow) or the plain publish (no mlflow) when it was made live."""

    metrics: dict[str, float | int]
    path: Path
    logged: LoggedVersion | None = None
    promotion: registry.Promotion | None = None
    published: Change | None = None


def train(
    settings: Settings,
    aws: Aws,
    data: Path | None = None,
    *,
    rows: int = 20000,
    seed: int = 42,
    publish: bool | None = None,
    mlflow: bool | None = None,
) -> Trained:
    """Train, export and verify the ONNX model. With mlflow (default: when the tracking server answers) log and
    register it, and promote it only when ``publish``; without, publish it unless ``publish`` is False."""
    if mlflow is None:
        mlflow = registry.server_reachable(settings)
    if mlflow:
        logged = train_and_log(settings, data, rows=rows, seed=seed)
        # Its ONNX was checked against the pipeline here, before logging: from a tracking server the lab did not start,
        # promote does not load that pipeline back (it would run code from there: registry.check_trusted).
        check = not settings.mlflow_external
        promotion = registry.promote(settings, aws, logged.version, name=logged.name, check=check) if publish else None
        return Trained(logged.metrics, settings.model_path, logged=logged, promotion=promotion)
    from mlops_lab.train import train_and_export

    metrics = train_and_export(data, settings.model_path, rows=rows, seed=seed).metrics
    published = model.publish(settings, aws, settings.model_path.read_bytes()) if publish in (None, True) else None
    return Trained(metrics, settings.model_path, published=published)
