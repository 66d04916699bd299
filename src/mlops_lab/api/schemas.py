"""Request and response shapes.

The request record is *derived from the served model's ONNX input schema* when a model is loaded
(``build_record_types``), once per model, never per request: a missing field, an extra field, a wrong type or (when
the model declares its vocabulary) an unknown category is a 422 naming the field.

The response models are static: a prediction row is any of the three kinds' rows (a label and class probabilities, a
label alone, a regressor's value); the OpenAPI document narrows it to the live model's (``prediction_schema``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, TypeAdapter, with_config
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from mlops_lab.inference import REGRESSOR, Feature

# Integers travel through float64 in the core, so only these are exact.
MAX_SAFE_INTEGER = 2**53
MAX_STRING_LENGTH = 1024
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _integral(value: Any) -> Any:
    """Accept ints and integral floats (``40.0``); reject strings and booleans, which pydantic's lax mode would take."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise PydanticCustomError(
                "int_from_float", "Input should be a valid integer, got a number with a fractional part"
            )
        return int(value)
    return value


IntegerValue = Annotated[int, Field(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER), BeforeValidator(_integral)]
NumberValue = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# (Lone surrogates, which onnxruntime could not encode, never get this far: pydantic's JSON parser rejects them.)
StringValue = Annotated[str, Field(strict=True, max_length=MAX_STRING_LENGTH)]


def field_type(feature: Feature) -> Any:
    if feature.is_string:
        if feature.categories:
            return Literal[tuple(sorted(feature.categories))]  # type: ignore[misc]
        return StringValue
    if feature.is_integer:
        return IntegerValue
    if feature.json_type == "boolean":
        return StrictBool
    if feature.dtype is np.float32:  # larger values would become inf in the tensor
        return Annotated[NumberValue, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
    return NumberValue


@dataclass(frozen=True)
class RecordTypes:
    """Validators for one model's records, built once when the model is loaded."""

    one: TypeAdapter  # a single record -> dict
    many: TypeAdapter  # a non-empty list of records -> list[dict]
    schema: dict[str, Any]  # JSON schema of one record (for /openapi.json)
    max_rows: int


def build_record_types(features: list[Feature], max_rows: int, title: str = "Record") -> RecordTypes:
    fields = {feature.name: field_type(feature) for feature in features}
    record = TypedDict(title, fields)  # type: ignore[operator]  # functional form: any column name works
    record = with_config(ConfigDict(extra="forbid", title=title))(record)
    one = TypeAdapter(record)
    many = TypeAdapter(Annotated[list[record], Field(min_length=1, max_length=max_rows)])  # type: ignore[valid-type]
    schema = one.json_schema()
    schema.pop("$defs", None)
    schema["example"] = example_record(features)
    return RecordTypes(one=one, many=many, schema=schema, max_rows=max_rows)


def example_record(features: list[Feature]) -> dict[str, Any]:
    """A valid record (first category, empty string, zero) — for warm-up and the docs' example."""
    values: dict[str, Any] = {}
    for f in features:
        if f.is_string:
            values[f.name] = sorted(f.categories)[0] if f.categories else "unknown"
        elif f.json_type == "boolean":
            values[f.name] = False
        else:
            values[f.name] = 0
    return values


# -- responses ------------------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ModelRef(BaseModel):
    name: str
    version: str


class Ready(BaseModel):
    status: Literal["ready", "loading"]
    model: ModelRef | None = None
    source: str
    error: str | None = Field(None, description="the last error reading the model source, if any")


class InputField(BaseModel):
    name: str
    type: Literal["string", "integer", "number", "boolean"]
    categories: list[str] | None = None


class Metadata(BaseModel):
    name: str
    version: str
    source: str
    fingerprint: str = Field(description="S3 ETag or file stat the model was loaded from")
    sha256: str
    loaded_at: str
    kind: Literal["classifier", "regressor"] = Field(
        description="a classifier answers labels (and class probabilities, when it gives them); a regressor, a number"
    )
    inputs: list[InputField]
    classes: list[str] = Field(description="the probability columns' classes, in order; empty when there are none")
    max_rows: int
    onnx_metadata: dict[str, str] = Field(default_factory=dict)


class ClassPrediction(BaseModel):
    """A classifier's row: its label and the probability of each class."""

    model_config = ConfigDict(extra="forbid")
    label: str
    probabilities: dict[str, float] = Field(description="per-class probability, keyed by class name")


class LabelPrediction(BaseModel):
    """A row of a classifier that gives no probabilities: its label alone."""

    model_config = ConfigDict(extra="forbid")
    label: str


class ValuePrediction(BaseModel):
    """A regressor's row: its value (null when the model answers NaN or an infinity)."""

    model_config = ConfigDict(extra="forbid")
    prediction: float | None


def prediction_schema(kind: str, classes: tuple[str, ...]) -> dict[str, Any]:
    """The JSON schema of one row the live model answers: a regressor's value, a label alone, or a label and the
    probability of each of ``classes`` (all of them, no other)."""
    if kind == REGRESSOR:
        return ValuePrediction.model_json_schema()
    if not classes:
        return LabelPrediction.model_json_schema()
    schema = ClassPrediction.model_json_schema()
    schema["properties"]["probabilities"] = schema["properties"]["probabilities"] | {
        "properties": {name: {"type": "number"} for name in classes},
        "required": list(classes),
        "additionalProperties": False,
    }
    return schema


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[ClassPrediction | LabelPrediction | ValuePrediction] = Field(
        description="one row per record, in order; every row has the shape of the live model's kind"
    )


class ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    detail: Any = Field(description="a message, or a list of validation errors each naming the field (`loc`)")
