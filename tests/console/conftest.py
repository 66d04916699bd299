"""Fixtures for the lab console: the console as `up` runs it (its own process, on the session's stack and mlflow),
two registered versions to promote between, and headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlops_lab import services, stack, training
from mlops_lab.settings import PROJECT_ROOT
from tests.support import Lab, free_port

CHROMIUM = os.environ.get("LAB_TEST_CHROMIUM", "/usr/bin/chromium")
# One screenshot per browser test, kept after the run (CI uploads nothing: look here).
ARTIFACTS = Path(os.environ.get("LAB_TEST_ARTIFACTS", PROJECT_ROOT / ".lab" / "artifacts")) / "console"


@dataclasses.dataclass
class Console:
    url: str
    lab: Lab


@pytest.fixture(scope="session")
def console_server(mlflow_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The console as `up` starts it (services.console_service) on a free port, against the session's emulator and
    mlflow."""
    settings = mlflow_lab.settings.model_copy(update={"console_port": free_port()})
    service = services.console_service(settings)  # its LAB_* environment is these settings
    state = settings.model_copy(update={"state_dir": tmp_path_factory.mktemp("console-state")})
    stack.start(state, service)
    try:
        yield Console(service.url, Lab(settings, mlflow_lab.aws))
    finally:
        stack.stop(state, service)


@pytest.fixture(scope="session")
def two_versions(mlflow_lab: Lab) -> tuple[str, str]:
    """Two registered versions of the demo model (small, quick to train)."""
    first = training.train_and_log(mlflow_lab.settings, rows=3000, seed=5, run_name="console-a")
    second = training.train_and_log(mlflow_lab.settings, rows=3000, seed=6, run_name="console-b")
    return first.version, second.version


@pytest.fixture
def console_http(console_server: Console) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=console_server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium from Debian's package (Playwright's own browser download is not used); per module, so
    Playwright's event loop is gone before other modules' tests run."""
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM}: `make install` installs Debian's chromium as root (apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: object, console_server: Console, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser page (its own cookies); a screenshot of it is saved after the test, pass or fail."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    context.set_default_timeout(30_000)
    opened = context.new_page()
    try:
        yield opened
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{request.node.name}.png"
        try:
            opened.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
