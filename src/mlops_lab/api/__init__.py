"""The lab's online API (FastAPI): ``create_app(settings=None, model_source=None)``; run with ``python -m mlops_lab.api``.

Kept import-light: ``from mlops_lab.api import serve`` does not build an app until called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fastapi import FastAPI

    from mlops_lab.settings import Settings


def create_app(
    settings: Settings | None = None, model_source: Any = None, *, environ: Mapping[str, str] | None = None
) -> FastAPI:
    from mlops_lab.api.app import create_app as factory

    return factory(settings, model_source, environ=environ)


def serve(
    settings: Settings | None = None, *, host: str | None = None, port: int | None = None, model_source: Any = None
) -> None:
    """Run the API with uvicorn in this process until interrupted (host/port default to LAB_API_HOST/LAB_API_PORT)."""
    import uvicorn

    from mlops_lab.settings import get_settings

    settings = settings or get_settings()
    app = create_app(settings, model_source)
    uvicorn.run(
        app,
        host=host or settings.api_host,
        port=port or settings.api_port,
        access_log=False,  # the app writes its own structured access log
        log_level="info",
        timeout_graceful_shutdown=10,
    )
