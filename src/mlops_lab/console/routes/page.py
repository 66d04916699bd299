"""The page: ``/`` (everything ``views.page`` gathers), ``/fragments/jobs`` (the jobs table the page's script
refreshes) and ``/health``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from mlops_lab.console import views
from mlops_lab.console.deps import AwsSessionDep, JobsCacheDep, SchemaCacheDep, SettingsDep
from mlops_lab.console.rendering import render

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/", response_class=HTMLResponse)
async def index(
    request: Request,
    settings: SettingsDep,
    aws_session: AwsSessionDep,
    schema_cache: SchemaCacheDep,
    jobs_cache: JobsCacheDep,
) -> HTMLResponse:
    context = await run_in_threadpool(views.page, settings, aws_session, schema_cache, jobs_cache)
    return render(request, "index.html", context)


@router.get("/fragments/jobs", response_class=HTMLResponse)
async def jobs_fragment(
    request: Request, settings: SettingsDep, aws_session: AwsSessionDep, jobs_cache: JobsCacheDep
) -> HTMLResponse:
    context = await run_in_threadpool(views.jobs_part, settings, aws_session, jobs_cache)
    return render(request, "_jobs.html", context)
