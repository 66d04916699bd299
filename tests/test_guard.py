"""The lab's guard against other web pages (src/mlops_lab/guard.py), in-process, no server: what it refuses and lets
through, as the emulator, mlflow and the API configure it, and how each of them is wired to it."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mlops_lab import emulator, guard, registry
from mlops_lab.api.app import create_app
from mlops_lab.settings import Settings
from tests import model_zoo

OWN = "http://127.0.0.1:4566"  # the server under test's own origin (the TestClient's base URL)
LAB = "http://127.0.0.1:8001"  # another of the lab's own origins (the console's)
OWN_WS = "ws://127.0.0.1:4566/ws"  # spelled out: the test client's default host, `testserver`, is not the lab's
TOKEN = "the-lab-token"
CROSS_SITE_NAVIGATION = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}


class Recorder:
    """The app behind the guard: answers 200 and counts what reached it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        self.calls.append(f"{scope['method']} {scope['path']}")
        headers = [(b"content-type", b"text/plain"), (b"access-control-allow-origin", b"*")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"reached"})


@pytest.fixture
def inner() -> Recorder:
    return Recorder()


def client_for(app: Any, base_url: str = OWN) -> TestClient:
    return TestClient(app, base_url=base_url)


@pytest.fixture
def emulator_guard(inner: Recorder) -> TestClient:
    """The guard as the emulator's launcher configures it: strict, admin paths need the token."""
    return client_for(
        guard.Guard(
            inner,
            origins=[LAB],
            admin_prefix=guard.MINISTACK_ADMIN,
            admin_open=guard.MINISTACK_OPEN,
            token=TOKEN,
        )
    )


@pytest.fixture
def page_guard(inner: Recorder) -> TestClient:
    """The guard as mlflow and the API configure it: top-level navigations from other sites pass."""
    return client_for(guard.Guard(inner, origins=[LAB], navigation=True))


def refused(response: Any, status: int = 403) -> bool:
    return response.status_code == status and response.headers.get("x-lab-guard") == "refused"


# -- Origin and Sec-Fetch-Site ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "http://localhost:9999", "http://127.0.0.1:9999", "null", "https://127.0.0.1:4566"],
)
def test_a_foreign_origin_is_refused_before_the_app(emulator_guard: TestClient, inner: Recorder, origin: str) -> None:
    response = emulator_guard.post("/2015-03-31/functions", headers={"Origin": origin}, content=b"{}")
    assert refused(response), (response.status_code, response.text)
    assert "another origin" in response.text
    assert "access-control-allow-origin" not in response.headers
    assert inner.calls == []


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_sec_fetch_site_cross_or_same_site_is_refused(emulator_guard: TestClient, inner: Recorder, site: str) -> None:
    response = emulator_guard.post("/", headers={"Sec-Fetch-Site": site}, content=b"Action=ListQueues")
    assert refused(response)
    assert inner.calls == []


def test_a_navigation_from_another_site_is_refused_by_the_emulator(emulator_guard: TestClient, inner: Recorder) -> None:
    """The emulator answers AWS's query API on GET too: even a link may not reach it from another site."""
    response = emulator_guard.get("/?Action=DeleteQueue&QueueUrl=x", headers=CROSS_SITE_NAVIGATION)
    assert refused(response)
    assert inner.calls == []


def test_a_navigation_from_another_site_reaches_mlflow_and_the_api(page_guard: TestClient, inner: Recorder) -> None:
    assert page_guard.get("/docs", headers=CROSS_SITE_NAVIGATION).text == "reached"
    # ...but only a top-level GET: a form POST, a frame or a fetch is refused
    assert refused(page_guard.post("/predict", headers=CROSS_SITE_NAVIGATION))
    assert refused(page_guard.get("/", headers=CROSS_SITE_NAVIGATION | {"Sec-Fetch-Dest": "iframe"}))
    assert refused(page_guard.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}))
    assert inner.calls == ["GET /docs"]


@pytest.mark.parametrize(
    "headers",
    [
        {},  # SDKs, the AWS CLI, mlflow's client
        {"Origin": OWN, "Sec-Fetch-Site": "same-origin"},  # the server's own page
        {"Origin": LAB},  # one of the lab's own origins (no Sec-Fetch-Site: not a browser's)
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
    ],
    ids=["no-origin", "same-origin", "lab-origin", "typed"],
)
def test_same_origin_and_no_origin_are_let_through(
    emulator_guard: TestClient, inner: Recorder, headers: dict[str, str]
) -> None:
    response = emulator_guard.post("/2015-03-31/functions", headers=headers, content=b"{}")
    assert response.status_code == 200 and response.text == "reached"
    assert inner.calls == ["POST /2015-03-31/functions"]


def test_the_own_origin_follows_the_host_it_was_sent_to(inner: Recorder) -> None:
    app = guard.Guard(inner)
    with client_for(app, "http://localhost:5000") as client:
        assert client.post("/x", headers={"Origin": "http://localhost:5000"}).status_code == 200
        assert refused(client.post("/x", headers={"Origin": "http://127.0.0.1:5000"}))  # not its Host, not the lab's


def test_a_preflight_from_another_origin_is_not_granted(emulator_guard: TestClient, inner: Recorder) -> None:
    preflight = {
        "Origin": "http://evil.test:8765",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
        "Sec-Fetch-Mode": "cors",
        "Sec-Fetch-Site": "cross-site",
    }
    response = emulator_guard.options("/2015-03-31/functions", headers=preflight)
    assert refused(response)
    assert not [name for name in response.headers if name.startswith("access-control-")]
    assert inner.calls == []


# -- Host -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:4566", "127.0.0.1.nip.io:4566", "localhost.evil.example", "localhost:http", ""],
)
def test_a_host_that_is_not_the_labs_is_refused(emulator_guard: TestClient, inner: Recorder, host: str) -> None:
    response = emulator_guard.get("/_ministack/health", headers={"Host": host})
    assert refused(response, 400)
    assert "DNS rebinding" in response.text
    assert inner.calls == []


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:4566",
        "localhost",
        "LOCALHOST:4566",
        "[::1]",
        "[::1]:4566",
        "bucket.localhost:4566",
    ],
)
def test_loopback_hosts_are_served(emulator_guard: TestClient, host: str) -> None:
    assert emulator_guard.get("/_ministack/health", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["attacker", "attacker:4566", "emulator:4566", "mlflow", "api:8080", "wpad"])
def test_a_single_label_host_is_refused_unless_configured(
    emulator_guard: TestClient, inner: Recorder, host: str
) -> None:
    """LLMNR, mDNS or a search domain can resolve a bare name to 127.0.0.1 for a rebinding page: compose's service
    names are not the lab's by their shape."""
    assert refused(emulator_guard.get("/_ministack/health", headers={"Host": host}), 400)
    assert not guard.host_allowed(host)
    assert inner.calls == []


def test_a_configured_compose_name_is_served(inner: Recorder) -> None:
    configured = guard.config_from_environment({guard.ENV_HOSTS: "emulator"})
    with client_for(guard.Guard(inner, **configured)) as client:
        assert client.get("/_ministack/health", headers={"Host": "emulator:4566"}).text == "reached"
        assert client.get("/_ministack/health", headers={"Host": "EMULATOR"}).text == "reached"
        assert refused(client.get("/_ministack/health", headers={"Host": "attacker:4566"}), 400)
        assert refused(client.get("/_ministack/health", headers={"Host": "mlflow:5000"}), 400)  # not this one's
    assert inner.calls == ["GET /_ministack/health", "GET /_ministack/health"]


# Which compose service a name in another service's environment points at, and the variables that say so.
COMPOSE_FILE = Path(__file__).parents[1] / "docker-compose.yml"
_URL_NAME = re.compile(r"^https?://([A-Za-z0-9_.-]+)(:\d+)?(/|$)")
_HOST_VARIABLES = {"LAB_EMULATOR_HOST", "LAB_MLFLOW_HOST", "LAB_API_HOST", "LAB_CONSOLE_HOST"}


def compose_calls(services: dict[str, Any]) -> set[tuple[str, str]]:
    """(caller, name) for every in-network address a service's environment or command points at: endpoint URLs and
    the lab's LAB_*_HOST settings, loopback and bind-all addresses left out."""
    calls = set()
    for caller, spec in services.items():
        environment = spec.get("environment") or {}
        for variable, value in environment.items():
            value = str(value)
            match = _URL_NAME.match(value)
            name = match.group(1) if match else value if variable in _HOST_VARIABLES else None
            if name and not guard.host_allowed(name):
                calls.add((caller, name))
    return calls


def test_compose_configures_every_name_its_services_call_each_other_by() -> None:
    """Each guarded service's LAB_ALLOWED_HOSTS holds exactly the name the others reach it by, so that no in-network
    call of docker-compose.yml gets 400 (the compose suite cannot run without an engine); the console, which nothing
    in the network calls, has none."""
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    calls = compose_calls(services)
    assert {name for _, name in calls} == {"emulator", "mlflow", "api"}, calls
    assert ("console", "api") in calls and ("bootstrap", "mlflow") in calls and ("mlflow", "emulator") in calls
    for _, name in calls:
        allowed = guard.config_from_environment(services[name]["environment"])["hosts"]
        assert allowed == [name], (name, allowed)
        assert guard.host_allowed(f"{name}:4566", allowed)
    assert "LAB_ALLOWED_HOSTS" not in services["console"]["environment"]
    assert "LAB_ALLOWED_HOSTS" not in services["bootstrap"]["environment"]


def test_extra_hosts_and_the_wildcard(inner: Recorder) -> None:
    assert guard.host_allowed("lab.example:8000", ["lab.example"])
    assert not guard.host_allowed("other.example:8000", ["lab.example"])
    assert guard.host_allowed("ec2-1-2-3-4.compute.amazonaws.com", ["*"])
    with client_for(guard.Guard(inner, hosts=["*"]), "http://10.0.0.5:8080") as client:
        assert client.get("/ping").status_code == 200
        assert refused(client.post("/invocations", headers={"Origin": "http://evil.example"}))  # Origin still checked


# -- the emulator's admin paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/_ministack/reset"),
        ("POST", "/_ministack/config"),
        ("GET", "/_ministack/sqs/messages"),
        ("GET", "/_ministack/lambda-code/000000000000/us-east-1/fn"),
        ("GET", "/_ministack/ready"),
        ("POST", "/_ministack/health"),
    ],
)
def test_an_admin_path_needs_the_lab_token(emulator_guard: TestClient, inner: Recorder, method: str, path: str) -> None:
    assert refused(emulator_guard.request(method, path))
    assert refused(emulator_guard.request(method, path, headers={guard.TOKEN_HEADER: "wrong"}))
    assert inner.calls == []
    assert emulator_guard.request(method, path, headers={guard.TOKEN_HEADER: TOKEN}).text == "reached"
    assert inner.calls == [f"{method} {path}"]


def test_the_health_check_needs_no_token(emulator_guard: TestClient) -> None:
    assert emulator_guard.get("/_ministack/health").text == "reached"
    assert emulator_guard.head("/_ministack/health").status_code == 200


def test_without_a_token_the_admin_paths_are_closed(inner: Recorder) -> None:
    app = guard.Guard(inner, admin_prefix=guard.MINISTACK_ADMIN, admin_open=guard.MINISTACK_OPEN, token=None)
    with client_for(app) as client:
        assert refused(client.post("/_ministack/reset", headers={guard.TOKEN_HEADER: ""}))
        assert client.get("/_ministack/health").status_code == 200


def test_the_token_file_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "emulator" / "admin-token"
    token = guard.read_token(path, create=True)
    assert len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert guard.read_token(path, create=True) == token == guard.read_token(path)


def test_the_launcher_reads_its_configuration_and_hides_it_from_lambda_workers(tmp_path: Path) -> None:
    environ = {
        guard.ENV_ORIGINS: "http://127.0.0.1:8001, http://localhost:8001",
        guard.ENV_HOSTS: "lab.example",
        guard.ENV_TOKEN_FILE: str(tmp_path / "token"),
        "PATH": "/usr/bin",
    }
    config = guard.config_from_environment(environ, pop=True)
    assert config["origins"] == ["http://127.0.0.1:8001", "http://localhost:8001"]
    assert config["hosts"] == ["lab.example"]
    assert config["token"] == (tmp_path / "token").read_text().strip()
    assert set(environ) == {guard.ENV_HOSTS, "PATH"}  # the token file's path and the origins are gone


def test_a_websocket_from_another_origin_is_closed_before_it_is_accepted(emulator_guard: TestClient) -> None:
    from starlette.websockets import WebSocketDisconnect

    with (
        pytest.raises(WebSocketDisconnect) as closed,
        emulator_guard.websocket_connect(OWN_WS, headers={"Origin": "http://evil.example"}),
    ):
        pass
    assert closed.value.code == 1008
    with emulator_guard.websocket_connect(OWN_WS) as socket:  # no Origin: as before
        assert socket is not None


# -- how each server of the lab is wired to it ---------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None, state_dir=tmp_path, emulator_port=4566, mlflow_port=5000, api_port=8000, console_port=8001
    )


def test_the_emulator_runs_behind_the_guard(settings: Settings) -> None:
    service = emulator.service(settings)
    python = emulator.EmulatorInstall(settings.emulator_venv).python
    assert service.command == [str(python), str(emulator.GUARD_FILE), "ministack"]
    assert Path(guard.__file__).resolve() == emulator.GUARD_FILE
    origins = service.env[guard.ENV_ORIGINS].split(",")
    assert {"http://127.0.0.1:8001", "http://localhost:5000", "http://[::1]:8000", "http://127.0.0.1:4566"} <= set(
        origins
    )
    assert service.env[guard.ENV_TOKEN_FILE] == str(emulator.admin_token_path(settings))
    assert emulator.service(settings, guarded=False).command == [
        str(emulator.EmulatorInstall(settings.emulator_venv).server)
    ]


def test_the_guard_file_imports_nothing_of_the_lab() -> None:
    """The emulator's venv runs it as a file: it has no mlops_lab (nor anything outside the standard library)."""
    source = Path(guard.__file__).read_text()
    imports = [line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [name for name in imports if name.startswith("mlops_lab")], imports
    assert set(imports) <= {"__future__", "hmac", "os", "re", "secrets", "sys", "collections.abc", "pathlib", "typing"}


def test_the_admin_headers_carry_the_labs_token(settings: Settings) -> None:
    headers = emulator.admin_headers(settings)
    assert headers == {guard.TOKEN_HEADER: emulator.admin_token_path(settings).read_text().strip()}


def test_mlflow_runs_behind_the_guard_with_its_own_options_set_to_the_labs(settings: Settings) -> None:
    service = registry.server_service(settings)
    command = service.command
    assert command[1:4] == ["-m", "mlops_lab.guard", "mlflow"]
    origins = command[command.index("--cors-allowed-origins") + 1].split(",")
    assert "http://localhost:8001" in origins and not [origin for origin in origins if ":9999" in origin]
    hosts = command[command.index("--allowed-hosts") + 1].split(",")
    assert {"127.0.0.1:*", "localhost:*", "[[]::1]:*"} <= set(hosts) and "*" not in hosts
    assert service.env[guard.ENV_ORIGINS] == ",".join(origins)


def test_the_mlflow_launcher_serves_the_guarded_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlflow server` builds its uvicorn command around mlflow's app; the launcher swaps in the guarded one."""
    import mlflow.server as server
    from mlflow.cli import cli

    monkeypatch.setattr(server, "_build_uvicorn_command", server._build_uvicorn_command)  # put back afterwards
    built: list[list[str]] = []

    def fake_main(args: list[str], prog_name: str) -> None:
        assert args[0] == "server" and args[1:] == ["--port", "5000"]
        built.append(server._build_uvicorn_command(None, "127.0.0.1", 5000, 1, "mlflow.server.fastapi_app:app"))

    monkeypatch.setattr(cli, "main", fake_main)
    guard.run_mlflow(["--port", "5000"])
    assert built[0][-1] == "mlops_lab.guard:mlflow_app"
    with pytest.raises(SystemExit, match="not starting it unguarded"):
        server._build_uvicorn_command(None, "127.0.0.1", 5000, 1, "some.other:app")


# -- the API ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_zoo.columns_classifier(tmp_path_factory.mktemp("guard-model") / "model.onnx")


@pytest.fixture
def guarded_api(api_model: Path, settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"api_key": "k", "api_access_log": False}), model_source=api_model)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client


RECORD = {"age": 45, "hours_per_week": 50, "score": 0.5, "work_class": "Private", "sex": "Male"}


def test_the_api_refuses_another_origin_before_the_fast_path(guarded_api: TestClient) -> None:
    key = {"X-API-Key": "k"}
    for headers in (
        key | {"Origin": "http://evil.test:9000"},
        key | {"Origin": "http://localhost:9999"},
        key | {"Sec-Fetch-Site": "cross-site"},
        key | {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:8001"},  # even the console's page
    ):
        assert refused(guarded_api.post("/predict", json=RECORD, headers=headers)), headers
    assert refused(guarded_api.get("/metadata", headers={"Host": "evil.test:8000"} | key), 400)
    preflight = guarded_api.options(
        "/predict", headers={"Origin": "http://evil.test:9000", "Access-Control-Request-Method": "POST"}
    )
    assert refused(preflight) and "access-control-allow-origin" not in preflight.headers


def test_the_api_serves_its_own_page_and_clients_without_origin(guarded_api: TestClient) -> None:
    key = {"X-API-Key": "k"}
    assert guarded_api.post("/predict", json=RECORD, headers=key).status_code == 200  # SDK-style: no Origin
    own = key | {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}  # /docs' "Try it out"
    assert guarded_api.post("/predict", json=RECORD, headers=own).status_code == 200
    assert guarded_api.post("/predict", json=RECORD).status_code == 401  # the key is still the key
    assert guarded_api.get("/docs", headers=CROSS_SITE_NAVIGATION).status_code == 200  # the console's link to /docs
