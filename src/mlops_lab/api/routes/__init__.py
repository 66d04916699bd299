"""The API's routes, one ``APIRouter`` per area, and :func:`add_routes`, which puts them on an app.

``ops`` (``/health``, ``/ready``, ``/ping``: never behind the key), ``model`` (``/metadata``, ``/predict``) and
``sagemaker`` (``/invocations``); the last two are behind the API key when one is set. Added in this order, which is
the order of the paths in the OpenAPI document.

Why not ``app.include_router``: FastAPI 0.165 keeps an included router as one lazily resolved ``_IncludedRouter``
entry that matches each request twice through per-request scope bookkeeping — about 10 µs more per routed request
(``/health``, ``/invocations``, every error) than a route registered on the app itself. :func:`add_routes` registers
each route on the app's own router instead, with the arguments it was declared with (what ``include_router`` used to
do), so the app's routes, their dependencies and the OpenAPI document are those of routes declared on the app.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from mlops_lab.api.deps import ApiKeyDep
from mlops_lab.api.routes import model, ops, sagemaker


def add_routes(app: FastAPI, *, api_key: bool) -> None:
    """All routes; the key check (``ApiKeyDep``) on the model's and SageMaker's only when a key is configured (no cost,
    and no security scheme in the docs, otherwise)."""
    auth = [ApiKeyDep] if api_key else []
    add_router(app, ops.router)
    add_router(app, model.router, dependencies=auth)
    add_router(app, sagemaker.router, dependencies=auth)


def add_router(app: FastAPI, router: APIRouter, *, dependencies: Sequence[Any] = ()) -> None:
    """Register ``router``'s routes on ``app``'s own router, ``dependencies`` first (as ``include_router`` would)."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"{route!r}: only APIRoutes are registered this way")
        app.router.add_api_route(
            route.path,
            route.endpoint,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=route.tags,
            dependencies=[*dependencies, *route.dependencies],
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=route.responses,
            deprecated=route.deprecated,
            methods=route.methods,
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            name=route.name,
            route_class_override=type(route),
            callbacks=route.callbacks,
            openapi_extra=route.openapi_extra,
            generate_unique_id_function=route.generate_unique_id_function,
        )
