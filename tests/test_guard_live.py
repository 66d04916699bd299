"""The guard on the session's real servers (src/mlops_lab/guard.py): MiniStack behind its launcher, mlflow's server
behind its own, the API as `up` runs it. What a web page would send is refused before it does anything; the lab's own
clients (boto3, mlflow's client) carry on as before."""

from __future__ import annotations

import stat
import uuid

import httpx
import pytest

from mlops_lab import emulator, guard, registry
from tests.support import Lab

FOREIGN = ("http://evil.example", "http://localhost:9999")


def _refused(response: httpx.Response, status: int = 403) -> bool:
    return response.status_code == status and response.headers.get("x-lab-guard") == "refused"


def test_the_emulator_refuses_other_origins_and_hosts(lab_stack: Lab) -> None:
    url = lab_stack.settings.emulator_url
    for origin in FOREIGN:
        preflight = httpx.options(
            f"{url}/2015-03-31/functions",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "*"},
        )
        assert _refused(preflight) and "access-control-allow-origin" not in preflight.headers
        listed = httpx.get(f"{url}/", headers={"Origin": origin, "Authorization": _test_key_signature("s3")})
        assert _refused(listed)
    assert _refused(httpx.get(f"{url}/_ministack/health", headers={"Host": "rebound.evil.example"}), 400)
    assert httpx.get(f"{url}/_ministack/health").status_code == 200
    # MiniStack itself still grants what it did to requests the guard lets through (SDKs send no Origin)
    assert (
        lab_stack.s3().head_bucket(Bucket=lab_stack.settings.model_bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    )


def test_the_emulator_admin_paths_need_the_labs_token(lab_stack: Lab) -> None:
    settings, url = lab_stack.settings, lab_stack.settings.emulator_url
    assert _refused(httpx.post(f"{url}/_ministack/reset"))
    assert _refused(httpx.post(f"{url}/_ministack/reset", headers={guard.TOKEN_HEADER: "guessed"}))
    assert _refused(httpx.get(f"{url}/_ministack/sqs/messages"))
    # the state is intact, and the token (made by the emulator's launcher, private to the user) opens the others
    lab_stack.s3().head_bucket(Bucket=settings.input_bucket)
    path = emulator.admin_token_path(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ready = httpx.get(f"{url}/_ministack/ready", headers=emulator.admin_headers(settings))
    assert ready.status_code == 200 and ready.json()["status"] == "completed"


def test_mlflow_refuses_other_origins_even_on_localhost(mlflow_lab: Lab) -> None:
    url = mlflow_lab.settings.mlflow_server_url
    create = f"{url}/ajax-api/2.0/mlflow/registered-models/create"
    names = []
    for origin in FOREIGN:
        name = f"evil-{uuid.uuid4().hex[:8]}"
        names.append(name)
        assert _refused(httpx.post(create, json={"name": name}, headers={"Origin": origin}))
        preflight = httpx.options(create, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert _refused(preflight) and "access-control-allow-origin" not in preflight.headers
    assert _refused(httpx.post(create, json={"name": names[0]}, headers={"Sec-Fetch-Site": "same-site"}))
    assert _refused(httpx.get(f"{url}/", headers={"Host": "rebound.evil.example:5000"}), 400)
    client = registry.client(mlflow_lab.settings)  # mlflow's own client: no Origin, unchanged
    assert not [model for model in client.search_registered_models() if model.name in names]
    # mlflow's UI page, as a person reaches it from the console's link (a top-level navigation from another site)
    page = httpx.get(
        url + "/", headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    )
    assert page.status_code == 200


def test_the_api_refuses_other_origins_and_hosts(api: httpx.Client) -> None:
    for origin in FOREIGN:
        assert _refused(api.post("/predict", json={}, headers={"Origin": origin}))
    assert _refused(api.get("/health", headers={"Host": "rebound.evil.example"}), 400)
    assert api.get("/health").status_code == 200


def _test_key_signature(service: str) -> str:
    """What a page can forge: MiniStack takes the well-known key `test` with any signature."""
    return (
        f"AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
    )


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx would send loopback requests through a proxy of the environment's."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
