"""What the lab can serve: ``describe`` checks an imported model's ONNX graph and completes its metadata.

The lab serves tabular models (``SUPPORTED``); ``describe`` refuses anything else (ImportRefused, saying why) and
writes what the serving path needs into the **published copy's** metadata: feature names, kind, classes
(``graph_classes``), the categories the graph's own encoders know (``graph_categories``), the model's name. The
user's file is never touched. ``model_import`` is the flow around it (read, convert, try on sample rows, publish).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlops_lab import registry
from mlops_lab.errors import Refused
from mlops_lab.inference import CLASSIFIER, TabularModel

SUPPORTED = (
    "the lab serves tabular models: one [N, 1] input per column, or one [N, features] input; float, double, int32, "
    "int64, bool or string columns; a classifier (a label output, with or without probabilities) or a regressor "
    "(one numeric output)"
)
_ELEMENT_TYPES = {"float", "double", "int32", "int64", "bool", "string"}


class ImportRefused(Refused, ValueError):
    """The model cannot be served as it is; the message says why and what the lab supports."""


@dataclass(frozen=True)
class Description:
    """What the published copy's metadata says about the model, and what was assumed."""

    kind: str
    features: list[str]
    classes: list[str]
    categories: dict[str, list[str]]
    properties: dict[str, str]  # the metadata written into the published copy
    notes: list[str] = field(default_factory=list)


def describe(
    onnx_bytes: bytes, *, name: str, origin: str, features: Sequence[str] | None = None
) -> tuple[bytes, Description]:
    """Check the model's inputs and outputs; the copy to publish, its metadata completed, and what it says."""
    import onnx

    try:
        proto = onnx.load_from_string(onnx_bytes)
    except Exception as error:
        raise ImportRefused(f"not an ONNX model: {error}") from None
    initializers = {item.name for item in proto.graph.initializer}
    inputs = [item for item in proto.graph.input if item.name not in initializers]
    widths = [_check_input(item) for item in inputs]
    existing = {prop.key: prop.value for prop in proto.metadata_props}
    notes: list[str] = []
    matrix = len(inputs) == 1 and widths[0] != 1
    if any(width != 1 for width in widths) and not matrix:
        raise ImportRefused(f"{len(inputs)} inputs, not all of shape [N, 1]: {SUPPORTED}")
    if matrix:
        width = widths[0]
        if features:
            names = list(features)
            if isinstance(width, int) and len(names) != width:
                raise ImportRefused(
                    f"{len(names)} feature names for an input of {width} columns ({inputs[0].name!r}): "
                    "the names cannot be mapped onto the model's columns"
                )
        elif "feature_names" in existing:
            names = json.loads(existing["feature_names"])
        elif isinstance(width, int):
            names = [f"f{i}" for i in range(width)]
            notes.append(
                f"the model names no features: its {width} columns are f0..f{width - 1} "
                "(name them with --features a,b,c or --features-from FILE.csv)"
            )
        else:
            raise ImportRefused(
                f"input {inputs[0].name!r} has no fixed width and no feature names: pass --features or --features-from"
            )
        properties = {"feature_names": json.dumps(names)}
    else:
        names = [item.name for item in inputs]
        if features and list(features) != names and sorted(features) != sorted(names):
            raise ImportRefused(
                f"this model's inputs are named already ({', '.join(names)}); --features and --features-from are for "
                "a model with one [N, features] input"
            )
        properties = {}
    categories = {**graph_categories(proto, names, matrix), **json.loads(existing.get("categories", "{}"))}
    if categories:
        properties["categories"] = json.dumps(categories, sort_keys=True)
    classes = graph_classes(proto)
    if classes and "classes" not in existing:
        properties["classes"] = json.dumps(classes)
    properties |= {"model_name": name, "source": origin}
    props = existing | properties
    onnx.helper.set_model_props(proto, props)
    stamped = proto.SerializeToString()
    try:
        served = TabularModel(stamped)
    except ValueError as error:
        raise ImportRefused(f"{error}: {SUPPORTED}") from None
    stamped = registry.stamp(stamped, kind=served.kind)
    props["kind"] = served.kind
    return stamped, Description(
        served.kind, names, list(served.classes) if served.kind == CLASSIFIER else [], categories, props, notes
    )


def _check_input(item: Any) -> int | str | None:
    """The input's width (1 for a column, N for a table, None/str when open); refuse what is not a table."""
    import onnx

    kind = item.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ImportRefused(f"input {item.name!r} is a {kind.replace('_type', '')}, not a tensor: {SUPPORTED}")
    element = onnx.TensorProto.DataType.Name(item.type.tensor_type.elem_type).lower()
    if element not in _ELEMENT_TYPES:
        raise ImportRefused(f"input {item.name!r} holds {element} values: {SUPPORTED}")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in item.type.tensor_type.shape.dim]
    if len(dims) > 2:
        shape = ", ".join(str(d if d is not None else "?") for d in dims)
        raise ImportRefused(
            f"input {item.name!r} has shape [{shape}]: an image or sequence model, not a table. {SUPPORTED}"
        )
    if len(dims) < 2:
        return 1  # [N]: one column
    return dims[1]


def graph_classes(proto: Any) -> list[str]:
    """Class labels from the graph itself: a ZipMap's keys, else a classifier node's ``classlabels_*``."""
    import onnx

    for wanted in ("ZipMap", "Classifier"):
        for node in proto.graph.node:
            if node.op_type == wanted or (wanted == "Classifier" and node.op_type.endswith("Classifier")):
                for attribute in node.attribute:
                    if attribute.name in ("classlabels_strings", "classlabels_int64s", "classlabels_ints"):
                        values = onnx.helper.get_attribute_value(attribute)
                        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    return []


def graph_categories(proto: Any, features: Sequence[str], matrix: bool) -> dict[str, list[str]]:
    """The categories each string column's encoder was fitted on (OneHotEncoder ``cats_strings``; LabelEncoder
    ``keys_strings``), traced back through the graph to the input column it encodes."""
    import onnx
    from onnx import numpy_helper

    producers = {output: node for node in proto.graph.node for output in node.output}
    constants = {item.name: numpy_helper.to_array(item) for item in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute:
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    inputs = {item.name for item in proto.graph.input}
    found: dict[str, list[str]] = {}
    for node in proto.graph.node:
        attribute = {"OneHotEncoder": "cats_strings", "LabelEncoder": "keys_strings"}.get(node.op_type)
        values = [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == attribute]
        if not values or not values[0]:
            continue
        column = _column_of(node.input[0], producers, constants, inputs, features, matrix)
        if column is not None:
            found[column] = sorted(v.decode() if isinstance(v, bytes) else str(v) for v in values[0])
    return found


def _column_of(
    tensor: str,
    producers: Mapping[str, Any],
    constants: Mapping[str, np.ndarray],
    inputs: set[str],
    features: Sequence[str],
    matrix: bool,
    depth: int = 0,
) -> str | None:
    """The input column ``tensor`` carries unchanged (through Identity, Cast, Reshape, or a column picked out of a
    Concat of columns or out of the input table), or None when it is anything else."""
    if depth > 20:
        return None
    if tensor in inputs:
        return None if matrix else tensor
    node = producers.get(tensor)
    if node is None:
        return None
    if node.op_type in ("Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"):
        return _column_of(node.input[0], producers, constants, inputs, features, matrix, depth + 1)
    if node.op_type in ("ArrayFeatureExtractor", "Gather") and node.input[1] in constants:
        index = np.asarray(constants[node.input[1]]).reshape(-1)
        if index.size != 1:
            return None
        source = node.input[0]
        if matrix and source in inputs:
            return features[int(index[0])] if int(index[0]) < len(features) else None
        concat = producers.get(source)
        if concat is not None and concat.op_type == "Concat" and int(index[0]) < len(concat.input):
            return _column_of(concat.input[int(index[0])], producers, constants, inputs, features, matrix, depth + 1)
    return None
