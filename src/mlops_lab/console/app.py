"""The lab console: one web page on the lab for a person (``http://127.0.0.1:8001/`` by default).

It shows each service's health, the live model (name, version, metrics, input columns), the registry's versions with
promote / roll back buttons, the recent batch jobs (refreshing by themselves) with a chart of each job's predictions,
an upload form for a CSV, and links to mlflow's UI and the API's ``/docs``. Server-rendered (Jinja2, every value
escaped), with one small script that refreshes the jobs; no build step.

It reads and changes the lab only through the library modules the CLI uses: ``services`` (their health), ``model``
and ``registry`` (the live model, versions, ``promote``), ``jobs`` (listing and uploading) and ``recovery``
(backlog), so it works wherever the CLI does, AWS included. State-changing forms are guarded (``security``): loopback
``Host`` only, same origin only, a CSRF token.

Where things are: the routes in ``mlops_lab.console.routes`` (``page``, ``jobs``, ``models``), their typed
dependencies in ``deps`` (``GuardedFormDep``: the one guard of every POST), responses in ``rendering``, what the page
shows in ``views``. ``create_app`` only wires them to the app's state; ``app`` is the app uvicorn serves.

Run by ``mlops-lab up`` (``services.console_service``) or compose's ``console`` service:
``uvicorn mlops_lab.console.app:app --host 127.0.0.1 --port 8001``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from mlops_lab import __version__, jobs
from mlops_lab.aws import Aws
from mlops_lab.console.rendering import refused_page
from mlops_lab.console.routes import add_routes
from mlops_lab.console.security import LOOPBACK_HOSTS, Csrf, Refused
from mlops_lab.console.views import ModelSchema
from mlops_lab.model_cache import ModelCache
from mlops_lab.settings import Settings, get_settings

STATIC = Path(__file__).parent / "static"
# The page's own script and style only; no inline script, no framing, forms post to the console alone.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def create_app(settings: Settings | None = None, aws: Aws | None = None) -> FastAPI:
    """The console on ``settings`` (default: the environment's); ``aws``: the session every request uses (default: a
    new one per request, from the SDK's configuration as it is then)."""
    app = FastAPI(title="mlops-lab console", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings or get_settings()
    app.state.aws_session = (lambda: aws) if aws is not None else Aws
    app.state.csrf = Csrf()
    app.state.schema_cache = ModelCache[ModelSchema]()
    app.state.jobs_cache = jobs.Cache()
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS))
    app.middleware("http")(security_headers)
    app.add_exception_handler(Refused, refused_page)  # type: ignore[arg-type]
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_routes(app)
    return app


async def security_headers(request: Request, call_next: Any) -> Response:
    response = await call_next(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


app = create_app()
