"""The lab console in the compose stack: its own container from the project image, published on 127.0.0.1 only,
showing the stack's services and its links as the host's browser reaches them."""

from __future__ import annotations

import os
import re

import httpx

CONSOLE_URL = os.environ.get("COMPOSE_CONSOLE_URL", "http://127.0.0.1:8001").rstrip("/")


def test_the_console_shows_the_stack(api_url: str, mlflow_url: str) -> None:
    assert httpx.get(f"{CONSOLE_URL}/health", timeout=5).json() == {"status": "ok"}
    page = httpx.get(f"{CONSOLE_URL}/", timeout=60)
    assert page.status_code == 200
    for service in ("emulator", "mlflow", "api"):
        row = re.search(rf'<tr data-service="{service}">(.*?)</tr>', page.text, re.S)
        assert row and ">healthy<" in row.group(1), (service, page.text[:3000])
    assert f'href="{mlflow_url}"' in page.text and f'href="{api_url}/docs"' in page.text
    assert 'id="live-version"' in page.text


def test_the_console_refuses_another_host_and_origin() -> None:
    assert httpx.get(f"{CONSOLE_URL}/", headers={"Host": "evil.example"}, timeout=10).status_code == 400
    refused = httpx.post(f"{CONSOLE_URL}/promote", data={"version": "1"}, headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
