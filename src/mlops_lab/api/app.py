"""The online API: the lab's ONNX model behind FastAPI, on the same inference core as the Lambda.

Endpoints: ``/health`` (alive), ``/ready`` (model loaded), ``/metadata``, ``/predict`` (JSON records), and SageMaker's
contract ``/ping`` + ``/invocations`` (CSV or JSON), so the same image serves on EC2 or as a SageMaker endpoint.

Scoring one request is CPU-light (validation + one ORT call), so the endpoints are ``async`` and run on the event
loop; requests with many rows are scored in the threadpool so they do not stall the loop for everyone else.
Successful ``POST /predict`` requests are answered by an ASGI fast path in front of the router, running the same
validation and scoring as the route (``mlops_lab.api.predict``); the route answers every error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic_core import to_json

from mlops_lab import __version__
from mlops_lab.api import payloads
from mlops_lab.api.access_log import AccessLogMiddleware, configure_logging
from mlops_lab.api.deps import ApiKeyDep, BodyDep, SnapshotDep, StoreDep, current_snapshot, read_body_limited
from mlops_lab.api.model_store import ModelSource, ModelStore, Snapshot, resolve_source
from mlops_lab.api.predict import PredictFastPath, predict_json, score
from mlops_lab.api.schemas import (
    ErrorResponse,
    Health,
    Metadata,
    PredictResponse,
    Ready,
)
from mlops_lab.inference import InputError, Prediction
from mlops_lab.settings import Settings, get_settings

# How long startup waits for the first load attempt before serving anyway (/ready says 503 until loaded).
STARTUP_WAIT_S = 10.0

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "API key required (LAB_API_KEY is set)"},
    413: {
        "model": ErrorResponse,
        "description": "body larger than LAB_API_MAX_BODY_BYTES or more rows than LAB_API_MAX_ROWS",
    },
    422: {"model": ErrorResponse, "description": "input does not match the model's schema; `loc` names the field"},
    503: {"model": ErrorResponse, "description": "no model loaded yet"},
}
JSON_HEADERS = [(b"content-type", b"application/json")]


class JSONBytes(Response):
    """A response whose body is already JSON bytes (no re-encoding, no per-request media type argument)."""

    media_type = "application/json"


def create_app(settings: Settings | None = None, model_source: str | Path | ModelSource | None = None) -> FastAPI:
    settings = settings or get_settings()
    source = resolve_source(model_source if model_source is not None else settings.api_model_source, settings)
    store = ModelStore(
        source, name=settings.model_name, max_rows=settings.api_max_rows, poll_s=settings.api_model_poll_s
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        first_attempt = asyncio.Event()
        poller = asyncio.create_task(store.run(first_attempt), name="model-poller")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first_attempt.wait(), STARTUP_WAIT_S)
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    app = FastAPI(
        title="mlops-lab model API",
        version=__version__,
        description=(
            "Scores the lab's ONNX income classifier with the same inference core as the batch Lambda. "
            "`POST /predict` takes one record or a list of records; `/ping` + `/invocations` are SageMaker's "
            "inference contract (CSV or JSON). The request schema below is derived from the served model."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    # The key check exists only when a key is configured: no cost (and no security scheme in the docs) otherwise.
    auth = [ApiKeyDep] if settings.api_key else []
    max_body_bytes = settings.api_max_body_bytes
    # POST /predict's fast path (src/mlops_lab/api/predict.py): inside the access log, in front of the router; it
    # answers only successful predictions and hands everything else to the route below.
    app.add_middleware(PredictFastPath, store=store, max_body_bytes=max_body_bytes, api_key=settings.api_key)
    if settings.api_access_log:
        configure_logging()
        app.add_middleware(AccessLogMiddleware)

    @app.exception_handler(payloads.PayloadError)
    async def payload_error(request: Request, exc: payloads.PayloadError) -> Response:
        request.state.error = exc.status
        return JSONResponse(exc.content(), status_code=exc.status)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> Response:
        report = exc.to_dict()
        return JSONResponse({"detail": report.pop("reason"), **report}, status_code=422)

    # -- liveness and readiness -------------------------------------------------------------------------------------

    @app.get("/health", response_model=Health, tags=["ops"], summary="process is alive")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', headers={"content-type": "application/json"})

    @app.get(
        "/ready",
        response_model=Ready,
        tags=["ops"],
        summary="model loaded (503 until then)",
        responses={503: {"model": Ready, "description": "no model loaded yet"}},
    )
    async def ready(store: StoreDep) -> Response:
        snapshot = store.current
        body = Ready(
            status="ready" if snapshot else "loading",
            model=snapshot.ref if snapshot else None,
            source=store.source.uri,
            error=store.last_error,
        )
        return JSONResponse(body.model_dump(), status_code=200 if snapshot else 503)

    @app.get(
        "/ping",
        tags=["sagemaker"],
        summary="SageMaker health check: 200 once the model is loaded",
        responses={
            200: {"content": {"application/json": {"schema": Health.model_json_schema()}}},
            503: {"model": ErrorResponse, "description": "no model loaded yet"},
        },
    )
    async def ping(store: StoreDep) -> Response:
        if store.current is None:
            return Response(b'{"detail":"model not loaded yet"}', status_code=503, media_type="application/json")
        return Response(b'{"status":"ok"}', media_type="application/json")

    # -- model ------------------------------------------------------------------------------------------------------

    @app.get(
        "/metadata",
        response_model=Metadata,
        tags=["model"],
        dependencies=auth,
        summary="model name, version, source, input schema, classes",
        responses={k: ERRORS[k] for k in (401, 503)},
    )
    async def metadata(snapshot: SnapshotDep) -> Response:
        info = snapshot.info
        body = {
            "name": info.name,
            "version": info.version,
            "source": info.source,
            "fingerprint": info.fingerprint,
            "sha256": info.sha256,
            "loaded_at": info.loaded_at,
            "inputs": info.inputs,
            "classes": list(info.classes),
            "max_rows": snapshot.types.max_rows,
            "onnx_metadata": info.onnx_metadata,
        }
        return JSONResponse(body)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        tags=["model"],
        dependencies=auth,
        summary="score one record or a list of records",
        responses={k: ERRORS[k] for k in (401, 413, 422, 503)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
            }
        },
    )
    async def predict(request: Request) -> Response:
        # Successful predictions are mostly answered by PredictFastPath before they get here; this route answers the
        # rest (every error) and defines the documentation. The snapshot and body checks are the functions SnapshotDep
        # and BodyDep run, in the same order (after the API key, when one is set), called directly.
        snapshot = current_snapshot(store)
        body = await read_body_limited(request, max_body_bytes)
        content, rows = await predict_json(snapshot, body)
        state = request.state
        state.rows = rows
        state.model_version = snapshot.info.version
        return JSONBytes(content)

    @app.post(
        "/invocations",
        tags=["sagemaker"],
        dependencies=auth,
        summary="SageMaker inference: text/csv (header optional) or application/json",
        responses={
            200: {
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}},
                    "text/csv": {"schema": {"type": "string"}},
                },
                "description": "predictions; CSV when `Accept: text/csv`",
            },
            415: {"model": ErrorResponse, "description": "unsupported Content-Type"},
            **{k: ERRORS[k] for k in (401, 413, 422, 503)},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InvocationRequest"}},
                    "text/csv": {
                        "schema": {"type": "string"},
                        "example": "<header row optional>\n<one row per record>",
                    },
                },
            }
        },
    )
    async def invocations(request: Request, snapshot: SnapshotDep, body: BodyDep) -> Response:
        content_type = request.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
        if content_type == "text/csv":
            columns, rows, first_row = payloads.invocation_csv(snapshot, body)
            prediction = await score(snapshot, columns, rows, first_row)
        elif content_type in ("application/json", "", "*/*"):
            records = payloads.invocation_json(snapshot, body)
            rows = len(records)
            prediction = await score(snapshot, payloads.columns_from_records(snapshot, records), rows)
        else:
            raise HTTPException(415, f"unsupported Content-Type {content_type!r}: send text/csv or application/json")
        request.state.rows = rows
        request.state.model_version = snapshot.info.version
        if "text/csv" in request.headers.get("accept", ""):
            probabilities = np.char.mod("%.6f", prediction.probabilities).tolist()
            text = payloads.predictions_csv(prediction.classes, prediction.labels.tolist(), probabilities)
            return Response(text, media_type="text/csv")
        return JSONBytes(_predictions_json(snapshot, prediction))

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _predictions_json(snapshot: Snapshot, prediction: Prediction) -> bytes:
    return to_json({"model": snapshot.ref, "predictions": prediction.records()}, inf_nan_mode="null")


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


def _openapi(app: FastAPI) -> dict[str, Any]:
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


app = create_app()
