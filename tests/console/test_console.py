"""The lab console over HTTP: its guards (Host, origin, CSRF), escaping, and the jobs it lists."""

from __future__ import annotations

import re

import httpx
import pytest

from mlops_lab import jobs
from tests.console.conftest import Console
from tests.support import wait_until

# Its promote requests are all meant to be refused; should one go through, the model live before this module is live
# again after it.
pytestmark = pytest.mark.usefixtures("live_model_put_back")


def _token(client: httpx.Client) -> str:
    page = client.get("/")
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found, page.text
    return found.group(1)


def test_an_unexpected_host_header_is_refused(console_http: httpx.Client) -> None:
    assert console_http.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert console_http.get("/", headers={"Host": "localhost:1234"}).status_code == 200


def test_state_changing_requests_need_the_origin_and_the_token(
    console_http: httpx.Client, console_server: Console
) -> None:
    token = _token(console_http)
    form = {"name": "income-classifier", "version": "1"}
    own = {"Origin": console_server.url}
    refused = console_http.post(
        "/promote", data=form | {"csrf_token": token}, headers={"Origin": "http://evil.example"}
    )
    assert refused.status_code == 403 and "another origin" in refused.text
    no_token = console_http.post("/promote", data=form, headers=own)
    assert no_token.status_code == 403 and "no CSRF token" in no_token.text
    wrong = console_http.post("/promote", data=form | {"csrf_token": "0" * 64}, headers=own)
    assert wrong.status_code == 403 and "wrong CSRF token" in wrong.text
    cross_site = console_http.post(
        "/promote", data=form | {"csrf_token": token}, headers=own | {"Sec-Fetch-Site": "cross-site"}
    )
    assert cross_site.status_code == 403
    nothing = console_http.post("/promote", data=form | {"csrf_token": token})  # neither Origin nor Referer
    assert nothing.status_code == 403
    headers = console_http.get("/").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


def test_keys_and_reasons_are_shown_escaped(console_http: httpx.Client, console_server: Console) -> None:
    lab = console_server.lab
    key = "console/x<b>y.csv"  # a key S3 accepts; the page must show it as text
    lab.s3().put_object(Bucket=lab.settings.input_bucket, Key=key, Body=b"<script>alert(1)</script>\n1\n")

    def listed() -> str | None:
        text = console_http.get("/fragments/jobs").text
        return text if 'data-status="rejected"' in text and "x&lt;b&gt;y.csv" in text else None

    text = wait_until(listed, timeout=120, interval=0.5, message="the job with an odd key was not listed as rejected")
    assert "<b>" not in text and "<script>" not in text


def test_upload_refuses_what_the_function_would_never_see(console_http: httpx.Client, console_server: Console) -> None:
    token = _token(console_http)
    response = console_http.post(
        "/upload",
        data={"csrf_token": token, "key": "../escape.csv"},
        files={"file": ("x.csv", b"a\n1\n", "text/csv")},
        headers={"Origin": console_server.url},
    )
    assert response.status_code == 303
    page = console_http.get("/").text
    assert "unusable key" in page
    assert jobs.check_key("dir/ok_file-1.csv") == "dir/ok_file-1.csv"


def test_jobs_json_lists_newest_first(console_http: httpx.Client) -> None:
    listed = console_http.get("/api/jobs").json()
    times = [job["uploaded"] for job in listed]
    assert times == sorted(times, reverse=True)


def test_upload_refuses_a_file_over_the_input_limit(console_http: httpx.Client, console_server: Console) -> None:
    limit = console_server.lab.settings.max_input_mb * 1024 * 1024
    response = console_http.post(
        "/upload",
        data={"csrf_token": _token(console_http), "key": "console/big.csv"},
        files={"file": ("big.csv", b"a\n" + b"1\n" * (limit // 2 + 1), "text/csv")},
        headers={"Origin": console_server.url},
    )
    assert response.status_code == 303
    assert "over the limit" in console_http.get("/").text
    head = console_server.lab.s3().list_objects_v2(
        Bucket=console_server.lab.settings.input_bucket, Prefix="console/big.csv"
    )
    assert head.get("KeyCount", 0) == 0
