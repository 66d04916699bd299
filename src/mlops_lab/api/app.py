"""The online API: the live ONNX model (any kind the core scores) behind FastAPI, on the same inference core as the
Lambda.

Endpoints: ``/health`` (alive), ``/ready`` (model loaded), ``/metadata``, ``/predict`` (JSON records), and SageMaker's
contract ``/ping`` + ``/invocations`` (CSV, JSON Lines or JSON) + ``/execution-parameters``, so the same image serves
on EC2, as a SageMaker endpoint or in a Batch Transform job.

Scoring one request is CPU-light (validation + one ORT call), so the endpoints are ``async`` and run on the event
loop; requests with many rows are scored in the threadpool so they do not stall the loop for everyone else.
Successful ``POST /predict`` requests are answered by an ASGI fast path in front of the router, running the same
validation and scoring as the route (``mlops_lab.api.predict``); the route answers every error. In front of both,
the lab's guard (``mlops_lab.api.guard``) refuses what another web page could make a browser send (another
``Origin``, ``Sec-Fetch-Site: cross-site``/``same-site``, a ``Host`` that is not the lab's).

Where things are: the routes in ``mlops_lab.api.routes`` (``ops``, ``model``, ``sagemaker``), their typed
dependencies in ``deps``, the OpenAPI document in ``openapi``, exception handlers in ``errors``. ``create_app`` only
wires them to one :class:`ModelStore`; ``app`` is the app uvicorn serves (``mlops_lab.api.app:app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from fastapi import FastAPI

from mlops_lab import __version__
from mlops_lab.api.access_log import AccessLogMiddleware, configure_logging
from mlops_lab.api.errors import add_exception_handlers
from mlops_lab.api.guard import ApiGuard
from mlops_lab.api.model_store import ModelSource, ModelStore, default_model_source, resolve_source
from mlops_lab.api.openapi import openapi_document
from mlops_lab.api.predict import PredictFastPath
from mlops_lab.api.routes import add_routes
from mlops_lab.api.routes.sagemaker import ExecutionParameters
from mlops_lab.settings import Settings, get_settings

# How long startup waits for the first load attempt before serving anyway (/ready says 503 until loaded).
STARTUP_WAIT_S = 10.0

DESCRIPTION = (
    "Scores the live ONNX model (a classifier or a regressor) with the same inference core as the batch Lambda. "
    "`POST /predict` takes one record or a list of records; `/ping` + `/invocations` are SageMaker's "
    "inference contract (CSV or JSON). The request and response schemas below are the served model's."
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the store's poller (load, then watch for a new model); serve once the first load attempt is over."""
    store: ModelStore = app.state.store
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


def create_app(
    settings: Settings | None = None,
    model_source: str | Path | ModelSource | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """The app on one model source (default: ``default_model_source``). ``environ`` is the container's environment
    (default: this process's), read for SageMaker's variables only: where its model is, its batch parameters."""
    settings = settings or get_settings()
    environ = os.environ if environ is None else environ
    execution = ExecutionParameters.from_environment(environ)  # a bad SAGEMAKER_* variable stops the start here
    if model_source is None:
        model_source = default_model_source(settings, environ)
    source = resolve_source(model_source, settings)
    store = ModelStore(
        source, name=settings.model_name, max_rows=settings.api_max_rows, poll_s=settings.api_model_poll_s
    )
    app = FastAPI(title="mlops-lab model API", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store
    app.state.execution = execution
    # POST /predict's fast path (src/mlops_lab/api/predict.py): inside the access log, in front of the router; it
    # answers only successful predictions and hands everything else to the route.
    app.add_middleware(
        PredictFastPath, store=store, max_body_bytes=settings.api_max_body_bytes, api_key=settings.api_key
    )
    # Another web page's requests (foreign Origin, Sec-Fetch-Site cross-site/same-site, a Host that is not the lab's)
    # are refused here, before the fast path and the routes (src/mlops_lab/api/guard.py); the access log records them.
    app.add_middleware(ApiGuard, settings=settings)
    if settings.api_access_log:
        configure_logging()
        app.add_middleware(AccessLogMiddleware)
    add_exception_handlers(app)
    add_routes(app, api_key=bool(settings.api_key))
    app.openapi = functools.partial(openapi_document, app)  # type: ignore[method-assign]
    return app


app = create_app()
