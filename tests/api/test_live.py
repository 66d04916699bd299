"""The API as its image runs it (``python -m mlops_lab.api``), on a free loopback port, over real HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import httpx
import pytest

KEY = {"X-API-Key": "sekrit"}


def test_live_endpoints(live_server, record):
    url = live_server.url
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/ping").status_code == 200
    assert "swagger" in httpx.get(f"{url}/docs").text.lower()
    schema = httpx.get(f"{url}/openapi.json").json()
    assert schema["components"]["schemas"]["Record"]["properties"]["sex"]["enum"] == ["Female", "Male"]

    assert httpx.post(f"{url}/predict", json=record).status_code == 401
    response = httpx.post(f"{url}/predict", json=record, headers=KEY)
    assert response.status_code == 200
    assert response.json()["model"]["version"] == "1"
    assert httpx.post(f"{url}/predict", json=[record] * 51, headers=KEY).status_code == 413
    bad = httpx.post(f"{url}/predict", json=record | {"age": "x"}, headers=KEY)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "age"]
    csv_body = ",".join(map(str, record.values())) + "\n"
    invoked = httpx.post(
        f"{url}/invocations", content=csv_body, headers=KEY | {"content-type": "text/csv", "accept": "text/csv"}
    )
    assert invoked.status_code == 200
    label, *probabilities = invoked.text.removesuffix("\n").split(",")  # one line per record, no header
    assert invoked.text.count("\n") == 1 and label in ("<=50K", ">50K") and len(probabilities) == 2


def test_structured_access_log(live_server, record):
    httpx.post(f"{live_server.url}/predict", json=[record, record], headers=KEY)
    httpx.post(f"{live_server.url}/predict", json=record)
    time.sleep(0.2)
    entries = [json.loads(line) for line in live_server.log.read_text().splitlines() if line.startswith("{")]
    predicted = [e for e in entries if e["path"] == "/predict"]
    assert predicted[0]["status"] == 200 and predicted[0]["rows"] == 2 and predicted[0]["model_version"] == "1"
    assert predicted[1]["status"] == 401
    assert {"ts", "method", "ms", "bytes", "client"} <= set(predicted[0])


def test_swap_under_load_over_http(live_server, model_file, small_model_v2, record):
    """8 client threads post continuously; the published file is replaced; the poller swaps; nothing fails."""
    url = live_server.url
    stop = threading.Event()
    results: list[tuple[int, str | None]] = []
    errors: list[BaseException] = []

    def client() -> None:
        with httpx.Client(base_url=url, headers=KEY, timeout=10) as session:
            while not stop.is_set():
                try:
                    response = session.post("/predict", json=[record] * 3)
                except httpx.HTTPError as exc:  # a dropped connection would land here
                    errors.append(exc)
                    continue
                version = response.json()["model"]["version"] if response.status_code == 200 else None
                results.append((response.status_code, version))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        replacement = model_file.with_suffix(".new")
        shutil.copyfile(small_model_v2, replacement)
        os.replace(replacement, model_file)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum(1 for _, v in results if v == "2") < 100:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors
    assert {status for status, _ in results} == {200}
    versions = [v for _, v in results]
    assert versions.count("1") > 0 and versions.count("2") >= 100
    assert httpx.get(f"{url}/metadata", headers=KEY).json()["version"] == "2"


def exit_code(pid: int, timeout: float) -> int:
    """The exit code of our child ``pid`` once it exits (-N: killed by signal N)."""
    deadline = time.monotonic() + timeout
    while True:
        waited, status = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return os.waitstatus_to_exitcode(status)
        assert time.monotonic() < deadline, f"pid {pid} still runs after {timeout:.0f} s"
        time.sleep(0.05)


def test_sigterm_stops_cleanly(live_server):
    os.kill(live_server.pid, signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -15)
    assert exit_code(live_server.pid, timeout=15) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in live_server.log.read_text()
    # refused: nothing listens any more (a timeout would mean something still holds the port without answering)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{live_server.url}/health", timeout=1)
