"""Typed dependencies (``Annotated[..., Depends(...)]``), all ``async`` so none of them costs a threadpool hop.

The snapshot and body checks are also plain functions (``current_snapshot``, ``read_body_limited``): the hot
``/predict`` route calls them directly, since resolving them through ``Depends`` cost more per request than scoring
the row (bench/README.md).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from mlops_lab.api.model_store import ModelStore, Snapshot
from mlops_lab.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


StoreDep = Annotated[ModelStore, Depends(get_store)]


def current_snapshot(store: ModelStore) -> Snapshot:
    """The model to use for this whole request: read once, so a concurrent swap cannot change it mid-request."""
    snapshot = store.current
    if snapshot is None:
        reason = f": {store.last_error}" if store.last_error else ""
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"model not loaded yet from {store.source.uri}{reason}"
        )
    return snapshot


async def get_snapshot(store: StoreDep) -> Snapshot:
    return current_snapshot(store)


SnapshotDep = Annotated[Snapshot, Depends(get_snapshot)]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="when the server sets LAB_API_KEY")
bearer = HTTPBearer(auto_error=False, description="the same key as `Authorization: Bearer <key>`")


async def require_api_key(
    settings: SettingsDep,
    key: Annotated[str | None, Security(api_key_header)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    expected = settings.api_key
    if not expected:
        return
    given = key if key is not None else (credentials.credentials if credentials else None)
    if given is None or not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API key: send header X-API-Key (or Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )


ApiKeyDep = Depends(require_api_key)


async def read_body(request: Request, settings: SettingsDep) -> bytes:
    return await read_body_limited(request, settings.api_max_body_bytes)


async def read_body_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid Content-Length") from None
        if size > limit:
            raise _too_large(size, limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"request body of {size} bytes exceeds the limit of {limit} bytes (LAB_API_MAX_BODY_BYTES); "
        "split the input or use the S3 batch path",
    )


BodyDep = Annotated[bytes, Depends(read_body)]
