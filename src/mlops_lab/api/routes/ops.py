"""Liveness and readiness: ``/health``, ``/ready`` and SageMaker's ``/ping``. Never behind the API key."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from mlops_lab.api.deps import StoreDep
from mlops_lab.api.schemas import ErrorResponse, Health, Ready

router = APIRouter()


@router.get("/health", response_model=Health, tags=["ops"], summary="process is alive")
async def health() -> Response:
    return Response(b'{"status":"ok"}', headers={"content-type": "application/json"})


@router.get(
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


@router.get(
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
