"""The OpenAPI document: FastAPI's, plus the request and response schemas of the model being served right now.

``/predict`` and ``/invocations`` read their bodies themselves (no pydantic body parameter), so their request schemas
are components added here — ``Record`` derived from the served model's inputs, and the shapes built on it — and the
routes refer to them by ``$ref``. A response row is documented as any of the three kinds (a class and its
probabilities, a label alone, a regressor's value) until a model is loaded; then as the one shape the live model
answers (``Prediction``), with the model's own answer to the example record as the response examples. The document is
cached per model snapshot: a hot swap changes it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic_core import from_json, to_json

from mlops_lab.api import payloads
from mlops_lab.api.model_store import Snapshot
from mlops_lab.api.schemas import prediction_schema


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the request schema of the model being served right now (cached per model)."""
    snapshot: Snapshot | None = app.state.store.current
    cached = getattr(app.state, "openapi_cache", None)
    if cached is not None and cached[0] is snapshot:
        return cached[1]
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    if snapshot is not None:
        record = snapshot.types.schema | {"title": "Record"}
    else:
        record = {"title": "Record", "type": "object", "description": "no model loaded yet: the schema is not known"}
    ref = {"$ref": "#/components/schemas/Record"}
    records = {"type": "array", "items": ref, "minItems": 1, "maxItems": app.state.settings.api_max_rows}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Record"] = record
    components["PredictRequest"] = {
        "title": "PredictRequest",
        "anyOf": [ref, records],
        "description": "one record, or a list of records",
    }
    components["InvocationRequest"] = {
        "title": "InvocationRequest",
        "description": "records, one record, or mlflow's `dataframe_split` / `dataframe_records`, or `instances`",
        "anyOf": [
            ref,
            records,
            {
                "type": "object",
                "required": ["dataframe_split"],
                "additionalProperties": False,
                "properties": {"dataframe_split": {"$ref": "#/components/schemas/DataframeSplitBody"}},
            },
            {
                "type": "object",
                "required": ["dataframe_records"],
                "additionalProperties": False,
                "properties": {"dataframe_records": records},
            },
            {
                "type": "object",
                "required": ["instances"],
                "additionalProperties": False,
                "properties": {"instances": records},
            },
        ],
    }
    components["DataframeSplitBody"] = _dataframe_split_schema(record, app.state.settings.api_max_rows)
    if snapshot is not None:
        _live_responses(schema, snapshot)
    app.state.openapi_cache = (snapshot, schema)
    return schema


def _live_responses(schema: dict[str, Any], snapshot: Snapshot) -> None:
    """The response rows of the live model's kind, and its answer to the example record as the examples."""
    info = snapshot.info
    components = schema["components"]["schemas"]
    row = prediction_schema(info.kind, info.classes)
    what = f"{info.kind} without probabilities" if info.kind != "regressor" and not info.classes else info.kind
    components["Prediction"] = row | {
        "title": "Prediction",
        "description": f"a row of the live model, {info.name} version {info.version} (a {what})",
    }
    response = components["PredictResponse"]
    response["properties"]["predictions"]["items"] = {"$ref": "#/components/schemas/Prediction"}
    if snapshot.example is None:
        return
    # as /predict answers it (a NaN is null), and as /invocations' CSV
    predictions = from_json(to_json(snapshot.example.records(), inf_nan_mode="null"))
    response["example"] = {"model": snapshot.ref, "predictions": predictions}
    csv_answer = schema["paths"]["/invocations"]["post"]["responses"]["200"]["content"]["text/csv"]
    csv_answer["example"] = payloads.predictions_csv(snapshot.example)


def _dataframe_split_schema(record: dict[str, Any], max_rows: int) -> dict[str, Any]:
    """mlflow's split orientation. Documented with the columns in model order (any order is accepted)."""
    properties = record.get("properties")
    if not properties:
        return {"title": "DataframeSplitBody", "type": "object", "required": ["columns", "data"]}
    names = list(properties)
    width = len(names)
    return {
        "title": "DataframeSplitBody",
        "type": "object",
        "required": ["columns", "data"],
        "additionalProperties": False,
        "properties": {
            "columns": {
                "type": "array",
                "prefixItems": [{"const": n} for n in names],
                "minItems": width,
                "maxItems": width,
            },
            "data": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_rows,
                "items": {
                    "type": "array",
                    "prefixItems": [properties[n] for n in names],
                    "minItems": width,
                    "maxItems": width,
                },
            },
            "index": {"type": "array"},
        },
    }
