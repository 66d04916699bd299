"""What keeps another web page from driving the lab's local servers through the person's browser (issue 20).

Any page a person opens can send requests to 127.0.0.1. :class:`Guard` is one pure-ASGI middleware in front of the
emulator (MiniStack), mlflow's tracking server and the API, inside their own processes (the console has its own:
``console/security.py``). Before the app sees a request:

- **Host** (DNS rebinding): a loopback name (``127.0.0.1``, ``localhost``, ``*.localhost``, ``[::1]``, ``0.0.0.0``)
  or one of ``LAB_ALLOWED_HOSTS`` (``*``: any), with or without a port; otherwise 400. A rebinding page arrives with
  its own name in ``Host``, and that may be a single label too (LLMNR, mDNS or a search domain resolve ``attacker``),
  so compose's service names (``emulator``, ``mlflow``, ``api``) pass only where docker-compose.yml configures them.
- **Origin**: a request carrying an ``Origin`` must come from the server's own origin (``http://<its Host>``) or one
  of the lab's own (its services' on loopback, ``LAB_GUARD_ORIGINS``); ``Sec-Fetch-Site: cross-site`` or ``same-site``
  is refused as well; otherwise 403. CORS preflights are requests like any other: one from another origin gets 403 and
  no ``Access-Control-Allow-*`` header. SDKs, the AWS CLI and mlflow's client send neither header and pass unchanged.
  With ``navigation`` on (mlflow and the API serve pages to people) a top-level GET/HEAD navigation from another site
  (a link, the console's to mlflow's UI among them) is let through: its answer goes to the person, not to that site.
- **Admin paths** (the emulator's ``/_ministack/*`` but its ``GET /_ministack/health``): only with the lab's token in
  header ``X-Lab-Token`` (a file of the lab's state dir, mode 0600: ``LAB_GUARD_TOKEN_FILE``); otherwise 403.

Per request: one dict of the headers and a few lookups (a Host seen before is remembered), so the emulator's S3 path
and the API's ``/predict`` pay next to nothing.

This file imports nothing of mlops_lab and nothing outside the standard library: the emulator's own venv runs it as a
file, and so does the compose emulator image. Launchers (configuration from the environment, see
:func:`config_from_environment`):

- ``python guard.py ministack``: MiniStack's own entry point (its server, port and bind address), its app wrapped.
- ``python -m mlops_lab.guard mlflow [mlflow server options]``: ``mlflow server``, with its uvicorn serving the
  wrapped app (:data:`mlflow_app`) instead of mlflow's own.
"""

from __future__ import annotations

import hmac
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "0.0.0.0")
TOKEN_HEADER = "X-Lab-Token"
_TOKEN_KEY = TOKEN_HEADER.lower().encode()
# The emulator's admin endpoints, and the one of them anyone may use: the health check the lab and compose poll.
MINISTACK_ADMIN = "/_ministack/"
MINISTACK_OPEN = frozenset({"/_ministack/health"})

ENV_ORIGINS = "LAB_GUARD_ORIGINS"  # comma-separated origins besides the server's own (the lab's services')
ENV_HOSTS = "LAB_ALLOWED_HOSTS"  # the lab's setting `allowed_hosts`: comma-separated extra Host names, `*`: any
ENV_TOKEN_FILE = "LAB_GUARD_TOKEN_FILE"  # the admin token's file (created, 0600, when missing)

_REFUSED_SITES = (b"cross-site", b"same-site")
_READS = ("GET", "HEAD")
_MAX_REMEMBERED_HOSTS = 64


def host_name(host: str) -> str | None:
    """The name part of a ``Host`` header value, lower-cased; None when its port is not a number."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name, port = name + "]", rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            return None
    else:
        name, sep, port = host.rpartition(":")
        if not sep:
            name, port = host, None
    if port is not None and not port.isdigit():
        return None
    return name


def host_allowed(host: str, extra: Iterable[str] = ()) -> bool:
    """Is ``host`` (a ``Host`` header's value) one of the lab's names? See the module's docstring."""
    name = host_name(host)
    if not name:
        return False
    extra = tuple(allowed.strip().lower() for allowed in extra)
    return name in LOOPBACK_NAMES or name.endswith(".localhost") or "*" in extra or name in extra


def loopback_origins(ports: Iterable[int]) -> list[str]:
    """``http://<loopback name>:<port>`` for each port: the lab's own origins."""
    return [f"http://{name}:{port}" for port in ports for name in LOOPBACK_NAMES[:3]]


def lab_origins(settings: Any) -> list[str]:
    """The lab's own web origins: its services' (emulator, mlflow, API, console) on 127.0.0.1, localhost and [::1].
    ``settings``: the lab's ``Settings`` (only read here: this file cannot import mlops_lab)."""
    ports = (settings.emulator_port, settings.mlflow_port, settings.api_port, settings.console_port)
    return loopback_origins(dict.fromkeys(ports))


def lab_hosts(settings: Any) -> list[str]:
    """The Host names to accept beyond loopback ones: ``allowed_hosts``, and the hosts the lab's own services are
    configured on (a name or address the lab itself uses to reach them)."""
    configured = (settings.emulator_host, settings.mlflow_host, settings.api_host, settings.console_host)
    return list(dict.fromkeys([*settings.allowed_hosts, *configured]))


def read_token(path: str | Path, *, create: bool = False) -> str:
    """The admin token in ``path``; with ``create``, a new random one written there (mode 0600) when it is missing."""
    path = Path(path)
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # someone else wrote it first: theirs is the token
        else:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"{path} holds no token")
    return token


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def config_from_environment(environ: MutableMapping[str, str] | None = None, *, pop: bool = False) -> dict[str, Any]:
    """:class:`Guard`'s keyword arguments from ``LAB_GUARD_ORIGINS``, ``LAB_ALLOWED_HOSTS`` and ``LAB_GUARD_TOKEN_FILE``
    (the token is read, the file created when missing); ``pop``: remove the guard's own variables from ``environ``
    (MiniStack's Lambda workers inherit its environment)."""
    environ = os.environ if environ is None else environ
    get = environ.pop if pop else environ.get
    token_file = get(ENV_TOKEN_FILE, None)
    return {
        "origins": _split(get(ENV_ORIGINS, None)),
        "hosts": _split(environ.get(ENV_HOSTS)),
        "token": read_token(token_file, create=True) if token_file else None,
    }


class Guard:
    """A pure-ASGI middleware that refuses, before ``app`` sees them, requests from another origin or host."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        origins: Iterable[str] = (),
        hosts: Iterable[str] = (),
        navigation: bool = False,
        admin_prefix: str | None = None,
        admin_open: Iterable[str] = (),
        token: str | None = None,
    ) -> None:
        self.app = app
        self.origins = frozenset(origin.rstrip("/").encode("latin-1") for origin in origins)
        self.hosts = tuple(host.strip().lower() for host in hosts)
        self.navigation = navigation
        self.admin_prefix = admin_prefix
        self.admin_open = frozenset(admin_open)
        self.token = token.encode() if token else None
        self._hosts_seen: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":  # lifespan
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host")
        if host is not None and host not in self._hosts_seen:
            if not host_allowed(host.decode("latin-1"), self.hosts):
                await _refuse(scope, receive, send, 400, "this Host is not one of the lab's: refused (DNS rebinding?)")
                return
            if len(self._hosts_seen) < _MAX_REMEMBERED_HOSTS:
                self._hosts_seen.add(host)
        origin = headers.get(b"origin")
        if origin is not None and origin not in self.origins:
            scheme = b"https://" if scope.get("scheme") in ("https", "wss") else b"http://"
            if host is None or origin != scheme + host:
                await _refuse(scope, receive, send, 403, "a request from another origin: refused")
                return
        site = headers.get(b"sec-fetch-site")
        if site in _REFUSED_SITES and not (
            self.navigation
            and scope.get("method") in _READS
            and headers.get(b"sec-fetch-mode") == b"navigate"
            and headers.get(b"sec-fetch-dest") == b"document"
        ):
            await _refuse(scope, receive, send, 403, f"a request from another site ({site.decode()}): refused")
            return
        path = scope["path"]
        if (
            self.admin_prefix is not None
            and path.startswith(self.admin_prefix)
            and not (path in self.admin_open and scope.get("method") in _READS)
            and not self._token_matches(headers.get(_TOKEN_KEY))
        ):
            await _refuse(scope, receive, send, 403, f"an admin path: it needs the lab's {TOKEN_HEADER} header")
            return
        await self.app(scope, receive, send)

    def _token_matches(self, token: bytes | None) -> bool:
        return self.token is not None and token is not None and hmac.compare_digest(token, self.token)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, reason: str) -> None:
    if scope["type"] == "websocket":
        message = await receive()
        if message.get("type") == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008})  # closed before accepted: the server answers 403
        return
    body = f"mlops-lab guard: {reason}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"x-lab-guard", b"refused"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- launchers --------------------------------------------------------------------------------------------------


def run_ministack() -> None:
    """MiniStack as its own ``ministack`` command runs it (its server, GATEWAY_PORT, BIND_HOST, state, signals), with
    its ASGI app behind the guard: ``main`` serves the module's ``app``, replaced here before it starts."""
    import ministack.app as ministack  # the emulator venv's

    config = config_from_environment(pop=True)
    ministack.app = Guard(ministack.app, admin_prefix=MINISTACK_ADMIN, admin_open=MINISTACK_OPEN, **config)
    sys.argv = ["ministack"]
    ministack.main()


_MLFLOW_APP = "mlflow.server.fastapi_app:app"
_mlflow_app: Guard | None = None


def __getattr__(name: str) -> Any:
    """``mlflow_app``: mlflow's server app behind the guard, built on first use (uvicorn's import of it)."""
    global _mlflow_app
    if name != "mlflow_app":
        raise AttributeError(name)
    if _mlflow_app is None:
        from mlflow.server.fastapi_app import app

        _mlflow_app = Guard(app, navigation=True, **config_from_environment())
    return _mlflow_app


def run_mlflow(arguments: list[str]) -> None:
    """``mlflow server <arguments>``, whose uvicorn imports :data:`mlflow_app` (this module's) instead of mlflow's
    app: mlflow's own checks let any ``http://localhost:<port>`` origin in, and no ``Sec-Fetch-Site`` is looked at."""
    import inspect

    import mlflow.server as server
    from mlflow.cli import cli

    if __spec__ is not None and __spec__.name != "__main__":
        module = __spec__.name  # python -m mlops_lab.guard
    else:  # run as a file: its folder goes on the server's import path
        module = Path(__file__).stem
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
        )
    build = server._build_uvicorn_command
    position = list(inspect.signature(build).parameters).index("app_name")

    def guarded_command(*args: Any, **kwargs: Any) -> list[str]:
        args_list = list(args)
        if args_list[position] != _MLFLOW_APP:
            raise SystemExit(
                f"mlflow would serve {args_list[position]!r}, not {_MLFLOW_APP}: not starting it unguarded"
            )
        args_list[position] = f"{module}:mlflow_app"
        return build(*args_list, **kwargs)

    server._build_uvicorn_command = guarded_command
    cli.main(args=["server", *arguments], prog_name="mlflow")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ministack"]:
        run_ministack()
    elif argv[:1] == ["mlflow"]:
        run_mlflow(argv[1:])
    else:
        raise SystemExit("usage: guard.py ministack | guard.py mlflow [mlflow server options]")


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]  # run as a file from src/mlops_lab: its siblings are not top-level modules
    main()
