"""The OpenAPI document: FastAPI's, plus the request schemas of the model being served right now.

``/predict`` and ``/invocations`` read their bodies themselves (no pydantic body parameter), so their request schemas
are components added here — ``Record`` derived from the served model's inputs, and the shapes built on it — and the
routes refer to them by ``$ref``. The document is cached per model snapshot: a hot swap changes it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from mlops_lab.api.model_store import Snapshot


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
    app.state.openapi_cache = (snapshot, schema)
    return schema


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
