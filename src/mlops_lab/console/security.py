"""What keeps another web page from driving the console through the user's browser.

- **Host**: only loopback names are served (``127.0.0.1``, ``localhost``, ``[::1]``; any port). A DNS-rebinding page
  (``evil.example`` resolving to 127.0.0.1) arrives with its own name in ``Host`` and gets 400 (Starlette's
  ``TrustedHostMiddleware``).
- **Origin**: a state-changing request (POST) must come from the console's own origin: its ``Origin`` header (or, if
  a browser sent none, its ``Referer``) must be ``http://<the Host it was sent to>``; ``Sec-Fetch-Site``, when sent,
  must say ``same-origin``. Otherwise 403.
- **CSRF token**: every form carries a token bound to a random cookie (``HMAC(secret, cookie)``, compared in constant
  time); a POST without the pair gets 403. The cookie is ``HttpOnly`` and ``SameSite=Strict``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
COOKIE = "lab_console_session"
FIELD = "csrf_token"


class Refused(Exception):
    """A request the console will not act on (another origin, no or a wrong token), and why."""


class Csrf:
    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or secrets.token_bytes(32)

    @staticmethod
    def new_session() -> str:
        return secrets.token_urlsafe(32)

    def token(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    def check(self, request: Request, submitted: str | None) -> None:
        session = request.cookies.get(COOKIE)
        if not session or not submitted:
            raise Refused("no CSRF token: reload the console and use its own form")
        if not hmac.compare_digest(self.token(session), submitted):
            raise Refused("wrong CSRF token: reload the console and use its own form")


def check_origin(request: Request) -> None:
    """Refuse a request that does not come from the console's own origin."""
    host = request.headers.get("host", "")
    expected = f"{request.url.scheme}://{host}"
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin",):
        raise Refused(f"request from another origin (Sec-Fetch-Site: {fetch_site}); the console acts only on its own")
    origin = request.headers.get("origin")
    if origin is not None:
        if origin != expected:
            raise Refused(f"request from another origin ({origin}); the console acts only on its own ({expected})")
        return
    referer = request.headers.get("referer")
    if referer is None:
        raise Refused("no Origin or Referer header: the console acts only on its own pages' forms")
    parts = urlsplit(referer)
    if f"{parts.scheme}://{parts.netloc}" != expected:
        raise Refused(f"request from another page ({parts.scheme}://{parts.netloc}); the console acts only on its own")
