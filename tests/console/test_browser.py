"""The lab console in a real browser: headless Chromium (Debian's package) driven by Playwright for Python.

Each test leaves a screenshot in .lab/artifacts/console/<test name>.png (LAB_TEST_ARTIFACTS moves it).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops_lab import model, registry
from tests.console.conftest import Console
from tests.support import free_port

# Its tests promote on the session's stack: the model live before this module is live again after it.
pytestmark = pytest.mark.usefixtures("live_model_put_back")

JOB_WAIT_MS = 120_000  # a cold Lambda worker plus queueing behind others: bounded, generous


def test_the_page_shows_the_lab(page: Any, console_server: Console) -> None:
    page.goto(console_server.url)
    settings = console_server.lab.settings
    emulator_state = page.locator('tr[data-service="emulator"] .status')
    assert emulator_state.inner_text() == "healthy"  # exactly: "unhealthy" and "stopped" are the other states
    assert page.locator("#live-name").inner_text() == model.live_name(settings, console_server.lab.aws)
    assert page.locator("#link-mlflow").get_attribute("href") == settings.mlflow_tracking_uri
    assert page.locator("#link-api-docs").get_attribute("href") == settings.api_url + "/docs"
    assert page.locator("#upload-form input[type=file]").count() == 1


def test_an_uploaded_csv_appears_as_a_job_with_its_rows_and_chart(
    page: Any, console_server: Console, sample_csv: Path
) -> None:
    page.goto(console_server.url)
    page.set_input_files("#upload-form input[type=file]", str(sample_csv))
    page.fill("#upload-form input[name=key]", "browser/sample.csv")
    page.click("#upload-form button[type=submit]")
    assert "Uploaded s3://" in page.locator("#flash").inner_text()
    # The jobs table refreshes by itself (no reload here): the job turns from pending to ok.
    row = page.locator('tr.job[data-key="browser/sample.csv"][data-status="ok"]')
    row.wait_for(timeout=JOB_WAIT_MS)
    assert row.locator("td.rows").inner_text() == "500"
    bars = row.locator("svg.chart rect.bar")
    assert bars.count() >= 1
    labels = row.locator("svg.chart text.bar-label").all_text_contents()
    counts = [int(text.replace(",", "")) for text in row.locator("svg.chart text.bar-count").all_text_contents()]
    assert sum(counts) == 500 and set(labels) <= {"<=50K", ">50K"}, (labels, counts)


def test_a_bad_file_shows_its_reason(page: Any, console_server: Console, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("age,sex\n39,Male\n")
    page.goto(console_server.url)
    page.set_input_files("#upload-form input[type=file]", str(bad))
    page.fill("#upload-form input[name=key]", "browser/bad.csv")
    page.click("#upload-form button[type=submit]")
    row = page.locator('tr.job[data-key="browser/bad.csv"][data-status="rejected"]')
    row.wait_for(timeout=JOB_WAIT_MS)
    assert "missing columns" in row.locator(".reason").inner_text()


def test_a_file_that_is_not_a_csv_is_refused_with_its_reason(
    page: Any, console_server: Console, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    page.goto(console_server.url)
    page.set_input_files("#upload-form input[type=file]", str(notes))
    page.click("#upload-form button[type=submit]")
    assert "not a CSV file name" in page.locator("#flash.flash-error").inner_text()


def test_promoting_a_version_changes_the_live_version(
    page: Any, console_server: Console, two_versions: tuple[str, str]
) -> None:
    lab = console_server.lab
    first, second = two_versions
    registry.promote(lab.settings, lab.aws, first)
    page.goto(console_server.url)
    assert page.locator("#live-version").inner_text() == first
    page.locator(f'tr.version[data-version="{second}"] form.promote button').click()
    page.locator("#live-version").filter(has_text=second).wait_for()
    assert page.locator("#live-version").inner_text() == second
    assert f"version {second} is now live" in page.locator("#flash").inner_text()
    assert model.live_version(lab.settings, lab.aws) == second
    # and back: the older version's button says so
    back = page.locator(f'tr.version[data-version="{first}"] form.promote button')
    assert back.inner_text().startswith("Roll back to")


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another site: its page posts a promote form to the console as soon as it loads."""

    target = ""
    version = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><html><body>
<form id="f" method="post" action="{self.target}/promote">
  <input type="hidden" name="name" value="income-classifier">
  <input type="hidden" name="version" value="{self.version}">
  <input type="hidden" name="csrf_token" value="guessed">
</form>
<script>document.getElementById("f").submit();</script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def attacker_site(console_server: Console) -> Iterator[type[_Attacker]]:
    handler = type("Attacker", (_Attacker,), {"target": console_server.url})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_a_promote_from_another_origin_is_refused(
    page: Any, console_server: Console, two_versions: tuple[str, str], attacker_site: Any
) -> None:
    lab = console_server.lab
    first, second = two_versions
    registry.promote(lab.settings, lab.aws, first)
    page.goto(console_server.url)  # the user has the console open: its cookie is in the browser
    attacker_site.version = second
    page.goto(attacker_site.url)
    refused = page.locator("#refused")
    refused.wait_for()
    assert "request from another origin" in refused.inner_text(), refused.inner_text()
    assert model.live_version(lab.settings, lab.aws) == first
