"""The lab console: one web page on the lab for a person (``http://127.0.0.1:8001/`` by default).

It shows each service's health, the live model (name, version, metrics, input columns), the registry's versions with
promote / roll back buttons, the recent batch jobs (refreshing by themselves) with a chart of each job's predictions,
an upload form for a CSV, and links to mlflow's UI and the API's ``/docs``. Server-rendered (Jinja2, every value
escaped), with one small script that refreshes the jobs; no build step.

It reads and changes the lab only through the library modules the CLI uses: ``ops`` (services), ``model`` and
``registry`` (the live model, versions, ``promote``), ``jobs`` (listing and uploading) and ``recovery`` (backlog), so
it works wherever the CLI does, AWS included. State-changing forms are guarded (``security``): loopback ``Host``
only, same origin only, a CSRF token.

Run by ``mlops-lab up`` (``ops.console_service``) or compose's ``console`` service:
``uvicorn mlops_lab.console.app:app --host 127.0.0.1 --port 8001``.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.trustedhost import TrustedHostMiddleware

from mlops_lab import __version__, jobs, registry
from mlops_lab.aws import Aws
from mlops_lab.console import views
from mlops_lab.console.security import COOKIE, FIELD, LOOPBACK_HOSTS, Csrf, Refused, check_origin
from mlops_lab.errors import explain
from mlops_lab.settings import Settings, get_settings

HERE = Path(__file__).parent
FLASH_COOKIE = "lab_console_flash"
MAX_UPLOAD_FILES = 1
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
    settings = settings or get_settings()
    app = FastAPI(title="mlops-lab console", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")  # autoescape on: every value shown is escaped
    csrf = Csrf()
    schemas = views.SchemaCache()
    jobs_cache = jobs.Cache()
    app.state.settings = settings

    def session_aws() -> Aws:
        return aws or Aws()

    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
        session = request.cookies.get(COOKIE) or Csrf.new_session()
        flash = request.cookies.get(FLASH_COOKIE)
        response = templates.TemplateResponse(
            request,
            name,
            {**context, "csrf_field": FIELD, "csrf_token": csrf.token(session), "flash": _read_flash(flash)},
            status_code=status_code,
        )
        if request.cookies.get(COOKIE) != session:
            response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
        if flash:
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> HTMLResponse:
        context = await run_in_threadpool(views.page, settings, session_aws(), schemas, jobs_cache)
        return render(request, "index.html", context)

    @app.get("/fragments/jobs", response_class=HTMLResponse)
    async def jobs_fragment(request: Request) -> HTMLResponse:
        context = await run_in_threadpool(views.jobs_part, settings, session_aws(), jobs_cache)
        return render(request, "_jobs.html", context)

    @app.get("/api/jobs")
    async def jobs_json() -> JSONResponse:
        listed = await run_in_threadpool(jobs.list_jobs, settings, session_aws(), cache=jobs_cache)
        return JSONResponse([job.to_json() for job in listed])

    async def guarded_form(request: Request) -> Any:
        """The form of a state-changing request, once its origin and CSRF token are checked (Refused otherwise)."""
        check_origin(request)
        form = await request.form(max_files=MAX_UPLOAD_FILES, max_fields=8)
        token = form.get(FIELD)
        csrf.check(request, token if isinstance(token, str) else None)
        return form

    @app.post("/upload")
    async def upload(request: Request) -> Response:
        try:
            form = await guarded_form(request)
        except Refused as refused:
            return _refused(request, render, str(refused))
        file = form.get("file")
        if file is None or isinstance(file, str) or not file.filename:
            return _back("error", "Choose a CSV file to upload.")
        limit = settings.max_input_mb * 1024 * 1024
        if file.size is not None and file.size > limit:
            return _back(
                "error", f"Not uploaded: {file.size:,} bytes is over the limit of {limit:,} (LAB_MAX_INPUT_MB)."
            )
        key = str(form.get("key") or "").strip() or Path(file.filename).name
        try:
            uri = await run_in_threadpool(jobs.submit, settings, session_aws(), file.file, key)
        except jobs.UploadRefused as error:
            return _back("error", f"Not uploaded: {error}")
        except Exception as error:
            return _back("error", f"Not uploaded: {explain(error).message}")
        return _back("ok", f"Uploaded {uri}: the job appears below and updates by itself.")

    @app.post("/promote")
    async def promote(request: Request) -> Response:
        try:
            form = await guarded_form(request)
        except Refused as refused:
            return _refused(request, render, str(refused))
        name, version = str(form.get("name") or ""), str(form.get("version") or "")
        if not name or not version.isdigit():
            return _back("error", "Choose a registered version to promote.")
        try:
            promotion = await run_in_threadpool(registry.promote, settings, session_aws(), version, name=name)
        except Exception as error:
            return _back("error", f"Not promoted: {explain(error).message}")
        was = f" (was {promotion.previous})" if promotion.previous else ""
        return _back(
            "ok", f"{promotion.name} version {promotion.version} is now live{was}: the Lambda and the API use it."
        )

    return app


def _back(kind: str, message: str) -> RedirectResponse:
    """Back to the page (POST, redirect, GET) with a one-time message."""
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        FLASH_COOKIE, urllib.parse.quote(f"{kind}:{message}"[:600]), httponly=True, samesite="strict", path="/"
    )
    return response


def _read_flash(value: str | None) -> dict[str, str] | None:
    if not value:
        return None
    kind, _, message = urllib.parse.unquote(value).partition(":")
    return {"kind": "ok" if kind == "ok" else "error", "message": message}


def _refused(request: Request, render: Any, reason: str) -> HTMLResponse:
    return render(request, "refused.html", {"reason": reason}, status_code=403)


app = create_app()
