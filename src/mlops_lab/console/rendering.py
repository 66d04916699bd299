"""How the console answers: a page (with a fresh CSRF token and the one-time message), a redirect back to the page
with a message, and the refusal page."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from mlops_lab.console.security import COOKIE, FIELD, Csrf, Refused

FLASH_COOKIE = "lab_console_flash"
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")  # autoescape on: every value is escaped


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """The template ``name`` with its forms' CSRF token (setting the session cookie it is bound to, if the browser has
    none yet) and the one-time message, which it then clears."""
    csrf: Csrf = request.app.state.csrf
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


def back(kind: str, message: str) -> RedirectResponse:
    """Back to the page (POST, redirect, GET) with a one-time message; ``kind`` is ``ok`` or ``error``."""
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


async def refused_page(request: Request, refusal: Refused) -> HTMLResponse:
    """The app's handler of :class:`Refused` (raised by the guarded-form dependency): 403, saying why."""
    return render(request, "refused.html", {"reason": str(refusal)}, status_code=403)
