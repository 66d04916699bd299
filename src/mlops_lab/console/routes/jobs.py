"""Batch jobs: ``/api/jobs`` (the newest jobs as JSON) and ``POST /upload`` (a CSV into the input bucket)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from mlops_lab import jobs
from mlops_lab.console.deps import AwsSessionDep, GuardedFormDep, JobsCacheDep, SettingsDep
from mlops_lab.console.rendering import back
from mlops_lab.errors import explain

router = APIRouter()


@router.get("/api/jobs")
async def jobs_json(settings: SettingsDep, aws_session: AwsSessionDep, jobs_cache: JobsCacheDep) -> JSONResponse:
    listed = await run_in_threadpool(jobs.list_jobs, settings, aws_session(), cache=jobs_cache)
    return JSONResponse([job.to_json() for job in listed])


@router.post("/upload")
async def upload(form: GuardedFormDep, settings: SettingsDep, aws_session: AwsSessionDep) -> Response:
    file = form.get("file")
    if file is None or isinstance(file, str) or not file.filename:
        return back("error", "Choose a CSV file to upload.")
    limit = settings.max_input_mb * 1024 * 1024
    if file.size is not None and file.size > limit:
        return back("error", f"Not uploaded: {file.size:,} bytes is over the limit of {limit:,} (LAB_MAX_INPUT_MB).")
    key = str(form.get("key") or "").strip() or Path(file.filename).name
    try:
        uri = await run_in_threadpool(jobs.submit, settings, aws_session(), file.file, key)
    except jobs.UploadRefused as error:
        return back("error", f"Not uploaded: {error}")
    except Exception as error:
        return back("error", f"Not uploaded: {explain(error).message}")
    return back("ok", f"Uploaded {uri}: the job appears below and updates by itself.")
