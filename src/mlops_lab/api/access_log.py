"""Structured access logs: one JSON object per request, from a pure ASGI middleware (no BaseHTTPMiddleware cost)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

logger = logging.getLogger("mlops_lab.api.access")


def configure_logging() -> None:
    """JSON lines on stderr for the access log, plain lines for the service's own messages; idempotent."""
    for name, fmt in (("mlops_lab.api.access", "%(message)s"), ("mlops_lab.api", "%(levelname)s %(name)s: %(message)s")):
        target = logging.getLogger(name)
        if not target.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(fmt))
            target.addHandler(handler)
            target.setLevel(logging.INFO)
            target.propagate = False


class AccessLogMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        size = 0

        async def send_and_record(message: dict) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            state = scope.get("state") or {}
            client = scope.get("client")
            entry = {
                "ts": round(time.time(), 3),
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "ms": round((time.perf_counter() - start) * 1000, 3),
                "bytes": size,
                "client": client[0] if client else None,
            }
            for key in ("rows", "model_version", "error"):
                if key in state:
                    entry[key] = state[key]
            logger.info(json.dumps(entry, separators=(",", ":")))
