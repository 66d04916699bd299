"""The registry's versions: ``POST /promote`` makes one live (promoting an older one is the rollback)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from mlops_lab import registry
from mlops_lab.console.deps import AwsSessionDep, GuardedFormDep, SettingsDep
from mlops_lab.console.rendering import back
from mlops_lab.errors import explain

router = APIRouter()


@router.post("/promote")
async def promote(form: GuardedFormDep, settings: SettingsDep, aws_session: AwsSessionDep) -> Response:
    name, version = str(form.get("name") or ""), str(form.get("version") or "")
    if not name or not version.isdigit():
        return back("error", "Choose a registered version to promote.")
    try:
        promotion = await run_in_threadpool(registry.promote, settings, aws_session(), version, name=name)
    except Exception as error:
        return back("error", f"Not promoted: {explain(error).message}")
    was = f" (was {promotion.previous})" if promotion.previous else ""
    return back("ok", f"{promotion.name} version {promotion.version} is now live{was}: the Lambda and the API use it.")
