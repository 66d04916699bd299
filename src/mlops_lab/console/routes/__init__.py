"""The console's routes, one ``APIRouter`` per area, and :func:`add_routes`, which puts them on the app.

``page`` (``/health``, the page ``/`` and its jobs fragment), ``jobs`` (``/api/jobs``, ``POST /upload``) and
``models`` (``POST /promote``). Every POST takes its form from ``deps.GuardedFormDep``.
"""

from __future__ import annotations

from fastapi import FastAPI

from mlops_lab.console.routes import jobs, models, page

ROUTERS = (page.router, jobs.router, models.router)


def add_routes(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)
