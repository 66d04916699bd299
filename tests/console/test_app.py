"""The console's app in-process, no lab behind it: how it is wired (its POST routes all go through one guard), what
that guard refuses and lets through, and its links as settings."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from mlops_lab.console import views
from mlops_lab.console.app import create_app
from mlops_lab.console.deps import guarded_form
from mlops_lab.console.rendering import FLASH_COOKIE
from mlops_lab.console.routes import ROUTERS
from mlops_lab.console.security import COOKIE, FIELD
from mlops_lab.settings import Settings, as_environment

ORIGIN = "http://127.0.0.1:8001"
SESSION = "a-session-cookie"
POSTS = ("/upload", "/promote")


@pytest.fixture
def console() -> Iterator[TestClient]:
    """The console with a session cookie; redirects are not followed (the page behind them reads the lab)."""
    with TestClient(create_app(Settings()), base_url=ORIGIN, follow_redirects=False) as client:
        client.cookies.set(COOKIE, SESSION)
        yield client


def _token(client: TestClient, session: str = SESSION) -> dict[str, str]:
    return {FIELD: client.app.state.csrf.token(session)}  # type: ignore[attr-defined]


def _flash(response: object) -> str:
    return urllib.parse.unquote(response.cookies[FLASH_COOKIE])  # type: ignore[attr-defined]


def test_every_post_route_takes_its_form_from_the_one_guard() -> None:
    posts = [route for router in ROUTERS for route in router.routes if "POST" in getattr(route, "methods", ())]
    assert sorted(route.path for route in posts) == sorted(POSTS)
    for route in posts:
        assert isinstance(route, APIRoute)
        assert route.dependant.dependencies[0].call is guarded_form, route.path  # first: nothing else runs if refused


@pytest.mark.parametrize("path", POSTS)
def test_the_guard_refuses_what_another_page_could_send(console: TestClient, path: str) -> None:
    own = {"Origin": ORIGIN}
    token = _token(console)
    refusals = [
        ({"Origin": "http://evil.example"}, token, "request from another origin (http://evil.example)"),
        ({"Referer": "http://evil.example/page"}, token, "request from another page (http://evil.example)"),
        (own | {"Sec-Fetch-Site": "cross-site"}, token, "another origin (Sec-Fetch-Site: cross-site)"),
        ({}, token, "no Origin or Referer header"),
        (own, {}, "no CSRF token"),
        (own, {FIELD: "0" * 64}, "wrong CSRF token"),
        (own, _token(console, "another-session"), "wrong CSRF token"),  # the token is bound to the cookie
    ]
    for headers, form, reason in refusals:
        response = console.post(path, data=form, headers=headers)
        assert response.status_code == 403, (headers, form, response.text)
        assert 'id="refused"' in response.text and reason in response.text, (reason, response.text)
        assert FLASH_COOKIE not in response.cookies  # nothing was done, nothing to report on the page
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert console.post(path, data=token, headers=own | {"Host": "evil.example"}).status_code == 400


def test_the_guard_refuses_a_browser_without_the_session_cookie_and_gives_it_one(console: TestClient) -> None:
    console.cookies.clear()
    response = console.post("/promote", data=_token(console), headers={"Origin": ORIGIN})
    assert response.status_code == 403 and "no CSRF token" in response.text
    assert response.cookies[COOKIE]  # the refusal page's link back gets a page whose forms work


def test_a_form_from_the_console_itself_reaches_its_route(console: TestClient) -> None:
    token = _token(console)
    for headers in (
        {"Origin": ORIGIN},
        {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"},
        {"Referer": ORIGIN + "/"},  # a browser that sent no Origin
    ):
        response = console.post("/promote", data=token | {"name": "income-classifier"}, headers=headers)
        assert response.status_code == 303, (headers, response.text)
        assert _flash(response) == "error:Choose a registered version to promote."
    upload = console.post("/upload", data=token, headers={"Origin": ORIGIN})
    assert upload.status_code == 303 and _flash(upload) == "error:Choose a CSV file to upload."


def test_the_links_are_settings_read_from_the_variables_compose_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_CONSOLE_MLFLOW_LINK", "http://127.0.0.1:5999")
    monkeypatch.setenv("LAB_CONSOLE_API_LINK", "http://127.0.0.1:8999/")
    settings = Settings()
    assert views.links(settings) == {"mlflow": "http://127.0.0.1:5999", "api_docs": "http://127.0.0.1:8999/docs"}
    environment = as_environment(settings)  # what `up` gives the console it starts
    assert environment["LAB_CONSOLE_MLFLOW_LINK"] == "http://127.0.0.1:5999"
    assert environment["LAB_CONSOLE_API_LINK"] == "http://127.0.0.1:8999/"


def test_the_links_default_to_where_the_lab_reaches_mlflow_and_the_api() -> None:
    settings = Settings(console_mlflow_link=None, console_api_link=None, api_port=8123)
    assert views.links(settings) == {"mlflow": settings.mlflow_tracking_uri, "api_docs": "http://127.0.0.1:8123/docs"}
    assert "LAB_CONSOLE_MLFLOW_LINK" not in as_environment(settings)


def test_without_an_aws_profile_the_page_still_shows_with_one_line_saying_why(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK cannot make a session (AWS_PROFILE names a profile that is not there): the page is served, each part
    that needs AWS says so in one line, and the rest (links, services) still shows. It used to be a 500."""
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile-here")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path) + "/none")
    with TestClient(create_app(Settings()), base_url=ORIGIN) as client:
        page = client.get("/")
        fragment = client.get("/fragments/jobs")
    assert page.status_code == 200 and fragment.status_code == 200
    assert "no-such-profile-here" in page.text and "no-such-profile-here" in fragment.text
    assert "/docs" in page.text  # the links still show
