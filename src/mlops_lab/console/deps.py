"""The console's typed dependencies (``Annotated[..., Depends(...)]``): what its routes read from ``app.state``
(``create_app`` puts it there), and :data:`GuardedFormDep`, the one guard of every state-changing form.

All ``async``: none of them does I/O beyond reading the request, so none needs the threadpool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import FormData

from mlops_lab import jobs
from mlops_lab.aws import Aws
from mlops_lab.console.security import FIELD, Csrf, check_origin
from mlops_lab.console.views import ModelSchema
from mlops_lab.model_cache import ModelCache
from mlops_lab.settings import Settings

MAX_UPLOAD_FILES = 1
MAX_FORM_FIELDS = 8


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_aws_session(request: Request) -> Callable[[], Aws]:
    """What gives this request its AWS session. A call, not a session: making one can fail (a profile that is not
    there), and each route makes it where it reports that failure as it reports the lab's."""
    return request.app.state.aws_session


AwsSessionDep = Annotated[Callable[[], Aws], Depends(get_aws_session)]


async def get_jobs_cache(request: Request) -> jobs.Cache:
    return request.app.state.jobs_cache


JobsCacheDep = Annotated[jobs.Cache, Depends(get_jobs_cache)]


async def get_schema_cache(request: Request) -> ModelCache[ModelSchema]:
    return request.app.state.schema_cache


SchemaCacheDep = Annotated[ModelCache[ModelSchema], Depends(get_schema_cache)]


async def guarded_form(request: Request) -> FormData:
    """The form of a state-changing request, once it is known to come from the console's own page: its origin
    (``security.check_origin``), then the CSRF token it carries against its cookie. Otherwise ``security.Refused``,
    which the app answers with 403 and the refusal page (``rendering.refused_page``); the ``Host`` was checked before
    (``TrustedHostMiddleware``, 400)."""
    check_origin(request)
    form = await request.form(max_files=MAX_UPLOAD_FILES, max_fields=MAX_FORM_FIELDS)
    token = form.get(FIELD)
    csrf: Csrf = request.app.state.csrf
    csrf.check(request, token if isinstance(token, str) else None)
    return form


# Every POST route takes its form from here, as its first parameter: a refused request reaches nothing else.
GuardedFormDep = Annotated[FormData, Depends(guarded_form)]
