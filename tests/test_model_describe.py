"""`mlops-lab publish`'s checks and descriptions, without a server: what it reads from a model's graph, what it
writes into the published copy, and what it refuses (with a message saying what the lab supports)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mlops_lab.inference import CLASSIFIER, REGRESSOR, InputError, TabularModel
from mlops_lab.model_describe import ImportRefused, describe
from mlops_lab.model_import import default_name, generated_rows


def describe_file(path: Path, **kwargs: object) -> tuple[bytes, object]:
    return describe(path.read_bytes(), name="m", origin=str(path), **kwargs)  # type: ignore[arg-type]


def graph_model(inputs: list, outputs: list, nodes: list) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


# -- what is read from the graph -------------------------------------------------------------------------------


def test_the_course_model_is_described_from_its_own_graph(course_model_path: Path) -> None:
    original = course_model_path.read_bytes()
    digest = hashlib.sha256(original).hexdigest()
    stamped, description = describe_file(course_model_path)
    assert hashlib.sha256(course_model_path.read_bytes()).hexdigest() == digest  # the user's file is not touched
    assert description.kind == CLASSIFIER and description.classes == ["<=50K", ">50K"]
    proto = onnx.load_from_string(original)
    encoders = [n for n in proto.graph.node if n.op_type == "OneHotEncoder"]
    assert len(description.categories) == len(encoders) == 8
    assert description.categories["work_class"] == sorted(
        v.decode()
        for v in helper.get_attribute_value(next(a for a in encoders[0].attribute if a.name == "cats_strings"))
    )
    served = TabularModel(stamped)
    assert served.metadata["model_name"] == "m" and json.loads(served.metadata["categories"]) == description.categories
    assert served.metadata["kind"] == CLASSIFIER
    # Why it matters: the file as it came scores an unknown category as all zeros; the published copy says so.
    row = {name: ["0"] for name in served.feature_names} | {
        f.name: [sorted(f.categories)[0]] for f in served.features if f.categories
    }
    TabularModel(original).predict(row | {"work_class": ["Astronaut"]})
    with pytest.raises(InputError, match="unknown categories in column 'work_class'"):
        served.predict(row | {"work_class": ["Astronaut"]})


def test_a_single_tensor_model_gets_the_names_it_is_given(users_iris: tuple[Path, Path]) -> None:
    model_path, csv_path = users_iris
    names = csv_path.read_text().splitlines()[0].split(",")
    stamped, description = describe_file(model_path, features=names)
    assert description.features == names and description.notes == []
    assert description.classes == ["0", "1", "2"]
    served = TabularModel(stamped)
    assert served.feature_names == names and served.classes == ("0", "1", "2")
    # Without names the columns are f0..f3, and the description says how to name them.
    _, unnamed = describe_file(model_path)
    assert unnamed.features == ["f0", "f1", "f2", "f3"] and "--features" in unnamed.notes[0]


def test_a_regressor_is_recognised(users_diabetes: tuple[Path, Path]) -> None:
    model_path, _ = users_diabetes
    stamped, description = describe_file(model_path)
    assert description.kind == REGRESSOR and description.classes == []
    served = TabularModel(stamped)
    prediction = served.predict(generated_rows(served))
    assert prediction.kind == REGRESSOR and prediction.probabilities.shape == (len(prediction), 0)
    assert np.isfinite(prediction.labels.astype(np.float64)).all()


def test_default_names() -> None:
    assert default_name("models:/fraud-detector/3") == "fraud-detector"
    assert default_name("models:/fraud@champion") == "fraud"
    assert default_name("runs:/0123abcd/my model") == "my-model"
    assert default_name("/data/wine quality.onnx") == "wine-quality"
    assert default_name("/courses/course/model.onnx") == "course"  # model.onnx says nothing; its folder does


# -- what is refused --------------------------------------------------------------------------------------------


def value(name: str, element: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, element, shape)


@pytest.mark.parametrize(
    ("model", "says"),
    [
        (
            graph_model(
                [value("image", TensorProto.FLOAT, [None, 3, 32, 32])],
                [value("out", TensorProto.FLOAT, [None, 3, 32, 32])],
                [helper.make_node("Identity", ["image"], ["out"])],
            ),
            "an image or sequence model, not a table",
        ),
        (
            graph_model(
                [value("pixels", TensorProto.UINT8, [None, 4])],
                [value("out", TensorProto.UINT8, [None, 4])],
                [helper.make_node("Identity", ["pixels"], ["out"])],
            ),
            "holds uint8 values",
        ),
        (
            graph_model(
                [value("a", TensorProto.FLOAT, [None, 3]), value("b", TensorProto.FLOAT, [None, 3])],
                [value("out", TensorProto.FLOAT, [None, 3])],
                [helper.make_node("Add", ["a", "b"], ["out"])],
            ),
            "2 inputs, not all of shape [N, 1]",
        ),
        (
            graph_model(
                [value("x", TensorProto.FLOAT, [None, 3])],
                [value("out", TensorProto.FLOAT, [None, 3])],
                [helper.make_node("Identity", ["x"], ["out"])],
            ),
            "a regressor needs one numeric output of shape [N] or [N, 1]",
        ),
        (b"not a model at all", "not an ONNX model"),
    ],
    ids=["image", "uint8", "two-tables", "three-numbers-per-row", "garbage"],
)
def test_what_the_lab_cannot_serve_is_refused_saying_what_it_supports(model: bytes, says: str) -> None:
    with pytest.raises(ImportRefused) as refused:
        describe(model, name="m", origin="x.onnx")
    assert says in str(refused.value)
    if says != "not an ONNX model":
        assert "the lab serves tabular models" in str(refused.value)


def test_names_that_cannot_be_mapped_are_refused(users_iris: tuple[Path, Path], course_model_path: Path) -> None:
    model_path, _ = users_iris
    with pytest.raises(ImportRefused, match="3 feature names for an input of 4 columns"):
        describe_file(model_path, features=["a", "b", "c"])
    with pytest.raises(ImportRefused, match="inputs are named already"):
        describe_file(course_model_path, features=["a", "b"])
