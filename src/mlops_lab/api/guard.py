"""The API's guard against other web pages (issue 20): the lab's :class:`mlops_lab.guard.Guard`, outside the
``/predict`` fast path, configured from the API's settings.

- ``Host``: loopback names and ``LAB_ALLOWED_HOSTS`` (compose's ``api``; ``*``: any, for the image on EC2 or
  SageMaker); otherwise 400.
- A request with another ``Origin`` than the API's own (``http://<its Host>``, so its ``/docs`` page works) or the
  lab's (its services on loopback), or with ``Sec-Fetch-Site: cross-site``/``same-site``, gets 403 before any route,
  CORS preflights included. A top-level GET navigation from another page (the console's link to ``/docs``) passes.

Its cost on ``/predict``: one dict of the request's headers and three lookups (bench/api.py measures the whole path).
"""

from __future__ import annotations

from typing import Any

from mlops_lab.guard import Guard, lab_hosts, lab_origins
from mlops_lab.settings import Settings

__all__ = ["ApiGuard", "guard_options"]


def guard_options(settings: Settings) -> dict[str, Any]:
    """The guard's options for the API of ``settings``: the lab's own origins, its extra Host names, navigation on."""
    return {"origins": lab_origins(settings), "hosts": lab_hosts(settings), "navigation": True}


class ApiGuard(Guard):
    """:class:`Guard` with the API's options, as ``app.add_middleware(ApiGuard, settings=...)`` takes it."""

    def __init__(self, app: Any, *, settings: Settings) -> None:
        super().__init__(app, **guard_options(settings))
