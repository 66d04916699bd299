"""``POST /predict``: the scoring both its FastAPI route and its ASGI fast path run, and the fast path itself.

Why a fast path: a single-row request costs ~30 µs of model (casting + ONNX Runtime) and ~10 µs of validation and
JSON, while FastAPI's per-route machinery around it (route matching, ``request_response``, two exit stacks,
``solve_dependencies`` with its throwaway ``Response``, query/cookie parsing) costs about as much again — more than
the bare endpoint the issue measures against pays, since that endpoint does nothing else (bench/README.md).

:class:`PredictFastPath` is a pure ASGI layer inside the access log (so every request still gets its JSON line) and
in front of FastAPI's exception handling and router. For ``POST /predict`` with a declared ``Content-Length``
within ``LAB_API_MAX_BODY_BYTES`` it checks the API key exactly as the route's dependency does (when one is set),
reads the snapshot once, reads the body and runs :func:`predict_json` — the same function the route runs: the
model's pydantic validators, the core's scoring, the same JSON bytes — and sends the 200 itself.

Anything else is handed to the FastAPI app untouched, with whatever body was already read replayed: other paths and
methods, no model loaded yet, a missing or wrong key, no ``Content-Length``, a body over the limit, input that fails
validation or scoring (the route then reports it, so every error response comes from the one documented route), and
any request FastAPI's own OpenTelemetry instrumentation is observing (so its route spans and metrics stay whole).
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.security.utils import get_authorization_scheme_param
from pydantic_core import to_json

from mlops_lab.api import payloads
from mlops_lab.api.model_store import ModelStore, Snapshot
from mlops_lab.inference import SMALL_BATCH, InputError, Prediction

PATH = "/predict"
# Above this many rows, scoring moves off the event loop.
INLINE_ROWS = 64


async def score(snapshot: Snapshot, columns: dict[str, list[Any]], rows: int, first_row: int = 1) -> Prediction:
    if rows > INLINE_ROWS:
        return await run_in_threadpool(snapshot.model.predict, columns, first_row=first_row)
    return snapshot.model.predict(columns, first_row=first_row)


async def predict_json(snapshot: Snapshot, body: bytes) -> tuple[bytes, int]:
    """``/predict``'s 200 body and row count; PayloadError or InputError for input the model cannot score."""
    records = payloads.records_from_json(snapshot, body)
    rows = len(records)
    if rows <= SMALL_BATCH:  # one record, or a few: the core's fast path, inline
        predictions = snapshot.model.predict_small(records)
    else:
        predictions = (await score(snapshot, payloads.columns_from_records(snapshot, records), rows)).records()
    return to_json({"model": snapshot.ref, "predictions": predictions}, inf_nan_mode="null"), rows


def _route_path(scope: dict) -> str:
    """The path the router matches (as ``starlette._utils.get_route_path``)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


class PredictFastPath:
    def __init__(self, app: Any, *, store: ModelStore, max_body_bytes: int, api_key: str | None) -> None:
        self.app = app
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or _route_path(scope) != PATH
            or scope.get("fastapi.telemetry") is not None
        ):
            await self.app(scope, receive, send)
            return
        length = key = authorization = None
        for name, value in scope[
            "headers"
        ]:  # (ASGI header names are lower-case; the first one counts, as in Starlette)
            if name == b"content-length":
                length = value if length is None else length
            elif name == b"x-api-key":
                key = value if key is None else key
            elif name == b"authorization":
                authorization = value if authorization is None else authorization
        snapshot = self.store.current
        if (
            snapshot is None
            or length is None
            or not length.isdigit()
            or int(length) > self.max_body_bytes
            or (self.api_key is not None and not self._key_ok(key, authorization))
        ):
            await self.app(scope, receive, send)  # the route answers (503, 413, 401, or a chunked body it can limit)
            return
        received = []
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(message.get("body", b"") for message in received)
        if received[-1]["type"] != "http.request" or len(body) > self.max_body_bytes:
            await self.app(scope, _replay(received, receive), send)
            return
        try:
            content, rows = await predict_json(snapshot, body)
        except (payloads.PayloadError, InputError):
            await self.app(scope, _replay(received, receive), send)  # the route validates again and reports
            return
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["rows"] = rows
        state["model_version"] = snapshot.info.version
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def _key_ok(self, key: bytes | None, authorization: bytes | None) -> bool:
        """True only when ``deps.require_api_key`` would pass this request (X-API-Key first, else a Bearer token)."""
        assert self.api_key is not None
        if key:
            given = key.decode("latin-1")
        else:
            text = authorization.decode("latin-1") if authorization else None
            scheme, credentials = get_authorization_scheme_param(text)
            if not (text and scheme and credentials) or scheme.lower() != "bearer":
                return False
            given = credentials
        return secrets.compare_digest(given.encode(), self.api_key)


def _replay(messages: list[dict], receive: Any) -> Any:
    """A ``receive`` that returns the messages already read, then carries on with the connection's own."""
    pending = list(messages)

    async def replay() -> dict:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
