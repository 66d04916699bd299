"""Bring your own model: `mlops-lab publish MODEL` for an ONNX file or an mlflow model (ONNX or scikit-learn flavour).

``read_source`` gets ONNX bytes (converting a scikit-learn model with skl2onnx); ``describe`` (``model_describe``:
what the lab can serve) checks that the lab can serve them and writes what the serving path needs into the
**published copy's** metadata; ``import_model`` then scores sample rows (checking a converted model against the
original), registers a version in mlflow when the tracking server answers, and makes it live. The Lambda and the API
pick it up without a redeploy.

The trust boundary: an ONNX file is data (a graph of operators), and reading one runs none of its content. A
scikit-learn model is not: loading it (pickle, cloudpickle, or skops with the types its own artifact declares trusted)
runs code from the artifact. One from the lab's own tracking server was put there by someone who could already run
code here; one from a tracking server the lab did not start (``MLFLOW_TRACKING_URI``, ``settings.mlflow_external``) is
loaded only with ``trust=True`` (`publish --trust`), and refused otherwise (UntrustedModel).
"""

from __future__ import annotations

import contextlib
import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlops_lab import model, registry, training
from mlops_lab.aws import Aws, Change
from mlops_lab.contract import META_MODEL_NAME, META_MODEL_VERSION
from mlops_lab.inference import REGRESSOR, InputError, Prediction, TabularModel
from mlops_lab.model_describe import Description, ImportRefused, describe

# The trust rule is promote's too, so it lives in registry (a floor below); publish's callers find it here as well.
from mlops_lab.registry import TRUST_FLAG as TRUST_FLAG
from mlops_lab.registry import UntrustedModel as UntrustedModel
from mlops_lab.registry import check_trusted
from mlops_lab.settings import Settings

MLFLOW_SCHEMES = ("models:/", "runs:/")
GENERIC_STEMS = {"model", "classifier", "regressor", "export", "onnx"}
SAMPLE_ROWS = 20  # generated rows when no --sample is given
AGREEMENT_TOLERANCE = 1e-4


# -- the source ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    onnx: bytes
    name: str  # the registered name to use unless --name says otherwise
    origin: str  # what the user gave: a path or an mlflow URI
    sklearn: Any = None  # the scikit-learn model it was converted from, to check the conversion against
    example: Any = None  # pandas.DataFrame: the mlflow model's input example, when it has one


def default_name(origin: str) -> str:
    """A registered-model name from a file or URI: ``models:/<name>/…`` -> name; a file -> its stem."""
    if origin.startswith("models:/"):
        raw = origin.removeprefix("models:/").split("/")[0].split("@")[0]
    elif origin.startswith("runs:/"):
        raw = origin.rstrip("/").split("/")[-1]
    else:
        path = Path(origin)
        # A file called model.onnx says nothing: the folder it is in usually does (…/course/model.onnx -> course).
        raw = (
            path.resolve().parent.name
            if path.stem.lower() in GENERIC_STEMS and path.resolve().parent.name
            else path.stem
        )
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-")
    return name or "model"


def read_source(settings: Settings, origin: str, *, sample: Any = None, trust: bool = False) -> Source:
    """ONNX bytes from a ``.onnx`` file or an mlflow URI (``models:/name/version``, ``models:/name@alias``,
    ``runs:/id/path``) whose flavour is ONNX, the lab's own ONNX pyfunc, or scikit-learn (converted here; loading it
    runs code from its artifact: from a tracking server the lab did not start, only with ``trust``)."""
    if origin.startswith(MLFLOW_SCHEMES):
        return _read_mlflow(settings, origin, sample, trust)
    path = Path(origin)
    if not path.is_file():
        raise ImportRefused(f"no such file: {origin} (give a .onnx file, or an mlflow URI: models:/<name>/<version>)")
    if path.suffix.lower() != ".onnx":
        raise ImportRefused(
            f"{origin} is not an .onnx file; for a scikit-learn model, log it to mlflow and publish its URI"
        )
    return Source(path.read_bytes(), default_name(origin), origin)


def _read_mlflow(settings: Settings, uri: str, sample: Any, trust: bool = False) -> Source:
    import mlflow
    from mlflow.exceptions import MlflowException

    registry.client(settings)  # the lab's tracking server (raises ServerUnavailable when it does not answer)
    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as error:
        raise ImportRefused(f"cannot read {uri} from {settings.mlflow_tracking_uri}: {error}") from None
    flavors = info.flavors
    example = _input_example(uri)
    if "onnx" in flavors:
        import mlflow.onnx

        return Source(mlflow.onnx.load_model(uri).SerializeToString(), default_name(uri), uri, example=example)
    if (info.metadata or {}).get("format") == "onnx":  # the lab's own registered versions: ONNX inside a pyfunc
        return Source(_downloaded_onnx(uri), default_name(uri), uri, example=example)
    if "sklearn" in flavors:
        import mlflow.sklearn

        check_trusted(settings, uri, trust)
        estimator = mlflow.sklearn.load_model(uri)  # runs code from the artifact (pickle, or skops' trusted types)
        frame = example if example is not None else sample
        onnx_bytes = convert_sklearn_model(estimator, info.signature, frame)
        return Source(onnx_bytes, default_name(uri), uri, sklearn=estimator, example=example)
    raise ImportRefused(
        f"{uri} has flavours {', '.join(sorted(flavors))}: the lab imports ONNX and scikit-learn models; "
        "export yours to ONNX (e.g. with skl2onnx, tf2onnx or torch.onnx) and publish the .onnx file"
    )


def _input_example(uri: str) -> Any:
    import mlflow

    try:
        example = mlflow.models.Model.load(uri).load_input_example(mlflow.artifacts.download_artifacts(uri))
    except Exception:  # no example logged, or one this mlflow cannot read: the sample or generated rows serve
        return None
    import pandas as pd

    return example if isinstance(example, pd.DataFrame) else None


def _downloaded_onnx(uri: str) -> bytes:
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="mlops-lab-import-") as tmp:
        found = sorted(Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp)).rglob("*.onnx"))
        if not found:
            raise ImportRefused(f"{uri} holds no .onnx file")
        return found[0].read_bytes()


def convert_sklearn_model(estimator: Any, signature: Any, frame: Any) -> bytes:
    """skl2onnx conversion with one [N, 1] input per named column (types from the mlflow signature, else from the
    sample's dtypes), or one [N, features] float input when the model was fitted on a plain array."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import BooleanTensorType, FloatTensorType, Int64TensorType, StringTensorType

    from mlops_lab.train import TARGET_OPSET

    columns = _signature_columns(signature) or _frame_columns(frame)
    # Numbers as float32: what skl2onnx's converters expect (CSV text is cast to whatever the model declares).
    by_type = {"string": StringTensorType, "bool": BooleanTensorType, "int": Int64TensorType, "float": FloatTensorType}
    if columns:
        initial_types = [(name, by_type[kind]([None, 1])) for name, kind in columns]
    else:
        width = getattr(estimator, "n_features_in_", None)
        if width is None:
            raise ImportRefused(
                "cannot tell this scikit-learn model's inputs: log it with a signature or an input example, "
                "or pass --sample FILE.csv"
            )
        initial_types = [("input", FloatTensorType([None, int(width)]))]
    try:
        converted = convert_sklearn(estimator, initial_types=initial_types, target_opset=TARGET_OPSET)
    except Exception as error:  # skl2onnx raises many kinds (no converter for a step, shape errors)
        raise ImportRefused(f"skl2onnx could not convert this model: {error}") from None
    _rename_inputs(converted, [name for name, _ in initial_types])
    return converted.SerializeToString()


def _rename_inputs(proto: Any, names: Sequence[str]) -> None:
    """skl2onnx rewrites input names it finds odd ("od280/od315" -> "od280_od315"); the columns of the user's CSV keep
    them, so the graph's inputs get their names back (ONNX allows any string)."""
    initializers = {item.name for item in proto.graph.initializer}
    inputs = [item for item in proto.graph.input if item.name not in initializers]
    renames = {item.name: name for item, name in zip(inputs, names, strict=False) if item.name != name}
    if not renames:
        return
    for item in inputs:
        item.name = renames.get(item.name, item.name)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]


def _signature_columns(signature: Any) -> list[tuple[str, str]]:
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return []
    kinds = {"string": "string", "boolean": "bool", "integer": "int", "long": "int"}
    columns = []
    for spec in signature.inputs.inputs:
        kind = getattr(getattr(spec, "type", None), "name", "double")
        columns.append((spec.name, kinds.get(kind, "float")))
    return columns


def _frame_columns(frame: Any) -> list[tuple[str, str]]:
    if frame is None:
        return []
    from pandas.api.types import is_bool_dtype, is_integer_dtype, is_numeric_dtype

    columns = []
    for name in frame.columns:
        dtype = frame[name].dtype
        kind = "bool" if is_bool_dtype(dtype) else "int" if is_integer_dtype(dtype) else None
        columns.append((str(name), kind or ("float" if is_numeric_dtype(dtype) else "string")))
    return columns


# -- sample rows --------------------------------------------------------------------------------------------------


def read_sample(path: Path, limit: int = 1000) -> dict[str, list[str]]:
    """Columns of a CSV file's first ``limit`` rows, as text (as the Lambda reads them)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        rows = [row for _, row in zip(range(limit), reader, strict=False) if row]
    if not header or not rows:
        raise ImportRefused(f"{path} has no header and data rows to try the model on")
    return {name: [row[i] if i < len(row) else "" for row in rows] for i, name in enumerate(header)}


def header_of(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    if not header:
        raise ImportRefused(f"{path} has no header row to take feature names from")
    return [name.strip() for name in header]


def generated_rows(served: TabularModel, rows: int = SAMPLE_ROWS) -> dict[str, list[Any]]:
    """Rows made from the schema alone: each category in turn, small numbers, alternating booleans."""
    columns: dict[str, list[Any]] = {}
    for feature in served.features:
        if feature.categories:
            choices = sorted(feature.categories)
            columns[feature.name] = [choices[i % len(choices)] for i in range(rows)]
        elif feature.is_string:
            columns[feature.name] = ["a"] * rows
        elif feature.json_type == "boolean":
            columns[feature.name] = [i % 2 == 0 for i in range(rows)]
        else:
            columns[feature.name] = [i % 5 for i in range(rows)]
    return columns


def check_against_original(source: Source, served: TabularModel, columns: Mapping[str, Sequence[Any]]) -> str:
    """Score the sample with the scikit-learn model the ONNX was converted from; ImportRefused on disagreement."""
    import pandas as pd

    frame = pd.DataFrame({name: list(columns[name]) for name in served.feature_names})
    for feature in served.features:
        if not feature.is_string:
            frame[feature.name] = pd.to_numeric(frame[feature.name])
    onnx_side = served.predict({name: [str(v) for v in columns[name]] for name in served.feature_names})
    if served.per_column:
        expected = source.sklearn.predict(frame)
    else:
        expected = source.sklearn.predict(frame.to_numpy(dtype=np.float64))
    return _compare(onnx_side, np.asarray(expected), len(frame))


def _compare(onnx_side: Prediction, expected: np.ndarray, rows: int) -> str:
    if onnx_side.kind == REGRESSOR:
        got = onnx_side.labels.astype(np.float64)
        worst = float(np.max(np.abs(got - expected.reshape(-1).astype(np.float64))) if rows else 0.0)
        scale = max(1.0, float(np.max(np.abs(expected))) if rows else 1.0)
        if worst > AGREEMENT_TOLERANCE * scale:
            raise ImportRefused(
                f"the ONNX conversion disagrees with the scikit-learn model: predictions differ by up to {worst:.3g} "
                f"on {rows} sample rows (tolerance {AGREEMENT_TOLERANCE * scale:.3g}); nothing was published"
            )
        return f"ONNX agrees with scikit-learn on {rows} sample rows (max |difference| {worst:.1e})"
    disagreeing = int((onnx_side.labels.astype(str) != expected.reshape(-1).astype(str)).sum())
    if disagreeing:
        raise ImportRefused(
            f"the ONNX conversion disagrees with the scikit-learn model on {disagreeing} of {rows} sample rows; "
            "nothing was published"
        )
    return f"ONNX agrees with scikit-learn on all {rows} sample rows"


# -- the whole import ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Imported:
    name: str
    version: str | None  # the registry version, or None when mlflow was not used
    description: Description
    sample_rows: int
    sample_from: str
    checked: str  # what the sample run proved
    change: Change  # the publish
    previous: str | None  # the version (or name) that was live before


def import_model(
    settings: Settings,
    aws: Aws,
    origin: str,
    *,
    name: str | None = None,
    features: Sequence[str] | None = None,
    sample: Path | None = None,
    mlflow: bool | None = None,
    trust: bool = False,
) -> Imported:
    """Read, check, describe, try, register (when mlflow answers, or ``mlflow=True``) and make live a user's model.
    ``trust``: load a scikit-learn model from a tracking server the lab did not start (it runs the artifact's code)."""
    sample_columns = read_sample(sample) if sample is not None else None
    sample_frame = _typed_frame(sample_columns) if sample_columns is not None else None
    source = read_source(settings, origin, sample=sample_frame, trust=trust)
    name = name or source.name
    stamped, description = describe(source.onnx, name=name, origin=origin, features=features)
    served = TabularModel(stamped)
    if sample_columns is not None:
        columns: Mapping[str, Sequence[Any]] = sample_columns
        sample_from = str(sample)
    elif source.example is not None:
        columns = {c: source.example[c].astype(str).tolist() for c in source.example.columns}
        sample_from = "the mlflow model's input example"
    else:
        columns = generated_rows(served)
        sample_from = "rows generated from the model's schema"
    missing = [feature for feature in served.feature_names if feature not in columns]
    if missing:
        raise ImportRefused(
            f"the sample has no column {', '.join(missing)}: the model's features are {', '.join(served.feature_names)}"
        )
    rows = len(next(iter(columns.values()))) if columns else 0
    try:
        prediction = served.predict({feature: list(columns[feature]) for feature in served.feature_names})
    except InputError as error:
        raise ImportRefused(f"the model could not score the sample ({sample_from}): {error.reason}") from None
    checked = f"scored {len(prediction)} sample rows"
    if source.sklearn is not None:
        checked = check_against_original(source, served, columns)
    previous = model.published_metadata(settings, aws) or {}
    previous_identity = (
        " ".join(filter(None, (previous.get(META_MODEL_NAME), previous.get(META_MODEL_VERSION)))) or None
    )
    if mlflow is None:
        mlflow = registry.server_reachable(settings)
    if mlflow:
        example = _example_frame(served, columns)
        logged = training.log_imported(settings, name, stamped, example, kind=description.kind, origin=origin)
        promotion = registry.promote(settings, aws, logged.version, name=name)
        change, version = promotion.change, logged.version
    else:
        change, version = model.publish(settings, aws, stamped, name=name), None
    return Imported(name, version, description, rows, sample_from, checked, change, previous_identity)


def _typed_frame(columns: Mapping[str, Sequence[str]]) -> Any:
    """CSV text columns as a DataFrame, numbers where a whole column parses as numbers (for skl2onnx's types)."""
    import pandas as pd

    frame = pd.DataFrame(dict(columns))
    for name in frame.columns:
        with contextlib.suppress(ValueError, TypeError):  # a text column stays text
            frame[name] = pd.to_numeric(frame[name])
    return frame


def _example_frame(served: TabularModel, columns: Mapping[str, Sequence[Any]]) -> Any:
    """Five sample rows typed as the model takes them: mlflow's input example and signature."""
    import pandas as pd

    frame = pd.DataFrame({name: list(columns[name])[:5] for name in served.feature_names})
    for feature in served.features:
        if feature.json_type == "boolean":
            frame[feature.name] = frame[feature.name].astype(str).str.lower().isin(("true", "1"))
        elif not feature.is_string:
            frame[feature.name] = pd.to_numeric(frame[feature.name]).astype(
                "int64" if feature.is_integer else "float64"
            )
    return frame
