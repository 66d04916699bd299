"""The model: ``/metadata`` and ``POST /predict`` (JSON records). Behind the API key when one is set.

Successful ``/predict`` requests are mostly answered by ``mlops_lab.api.predict.PredictFastPath`` before they reach
the router; the route here answers the rest (every error) and defines the documentation.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from mlops_lab.api.deps import SnapshotDep, current_snapshot, read_body_limited
from mlops_lab.api.predict import predict_json
from mlops_lab.api.responses import JSONBytes, error_responses
from mlops_lab.api.schemas import Metadata, PredictResponse

router = APIRouter()


@router.get(
    "/metadata",
    response_model=Metadata,
    tags=["model"],
    summary="model name, version, source, kind, input schema, classes",
    responses=error_responses(401, 503),
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
        "kind": info.kind,
        "inputs": info.inputs,
        "classes": list(info.classes),
        "max_rows": snapshot.types.max_rows,
        "onnx_metadata": info.onnx_metadata,
    }
    return JSONResponse(body)


@router.post(
    "/predict",
    response_model=PredictResponse,
    tags=["model"],
    summary="score one record or a list of records",
    responses=error_responses(401, 413, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
        }
    },
)
async def predict(request: Request) -> Response:
    # The snapshot and body checks are the functions SnapshotDep and BodyDep run, in the same order (after the API
    # key, when one is set), called directly: resolving them through Depends costs more than scoring a row.
    state = request.app.state
    snapshot = current_snapshot(state.store)
    body = await read_body_limited(request, state.settings.api_max_body_bytes)
    content, rows = await predict_json(snapshot, body)
    request_state = request.state
    request_state.rows = rows
    request_state.model_version = snapshot.info.version
    return JSONBytes(content)
