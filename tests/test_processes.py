"""The supervisor signals only the processes the lab started: a pid file names a pid, its process's start time and
its command line, and a pid whose process no longer has both (a pid file left by a crash, its pid since reused) is
not the lab's: `down` and `stop` leave it alone. The processes here are `sleep`s and a tiny health server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops_lab import stack
from mlops_lab.services import STOP_ORDER, stop_services
from mlops_lab.settings import Settings
from tests.support import free_port, wait_until


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, state_dir=tmp_path / "state")


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process, leader of its own process group (as the lab's services are): what a stale pid file's
    pid may belong to after a reboot or a crash."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


def write_pid_file(settings: Settings, name: str, text: str) -> None:
    stack.run_dir(settings).mkdir(parents=True, exist_ok=True)
    (stack.run_dir(settings) / f"{name}.pid").write_text(text)


def probe(port: int) -> stack.Service:
    script = f"import http.server; http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()"
    return stack.Service(name="probe", command=[sys.executable, "-c", script], health_url=f"http://127.0.0.1:{port}/")


def identity(pid: int) -> tuple[int, tuple[str, ...]]:
    found = stack.process_identity(pid)
    assert found is not None
    return found


def test_a_bare_pid_file_of_an_unrelated_process_is_not_signalled(
    settings: Settings, stranger: subprocess.Popen[bytes]
) -> None:
    """A pid file as an older lab wrote it (the pid alone), now naming someone else's process."""
    for name in STOP_ORDER:
        write_pid_file(settings, name, str(stranger.pid))
    assert stack.pid_of(settings, "emulator") is None
    assert stop_services(settings) == []  # `down`
    assert stack.stop(settings, probe(free_port())) is False
    assert alive(stranger)


@pytest.mark.parametrize("differs", ["start time", "command line"])
def test_a_pid_whose_process_differs_from_the_record_is_not_signalled(
    settings: Settings, stranger: subprocess.Popen[bytes], differs: str
) -> None:
    start, cmdline = identity(stranger.pid)
    record = {"pid": stranger.pid, "start": start, "cmdline": list(cmdline)}
    if differs == "start time":  # the recorded process ended and the pid was given to this one
        record["start"] = start - 1
    else:
        record["cmdline"] = [sys.executable, "-m", "uvicorn", "mlops_lab.api.app:app"]
    write_pid_file(settings, "probe", json.dumps(record))
    write_pid_file(settings, "api", json.dumps(record))
    assert stack.pid_of(settings, "probe") is None
    assert stack.stop(settings, "probe") is False
    assert stop_services(settings, ["api"]) == []
    assert alive(stranger)
    assert not (stack.run_dir(settings) / "probe.pid").exists()  # the stale record is gone


def test_the_process_the_lab_started_is_recorded_and_stopped(settings: Settings) -> None:
    service = probe(free_port())
    pid = stack.start(settings, service)
    try:
        record = json.loads((stack.run_dir(settings) / "probe.pid").read_text())
        start, cmdline = identity(pid)
        assert record == {"pid": pid, "start": start, "cmdline": list(cmdline)}
        assert cmdline == tuple(service.command)
        assert stack.pid_of(settings, "probe") == pid
    finally:
        assert stack.stop(settings, service) is True
    wait_until(lambda: stack.process_identity(pid) is None, timeout=10)


def test_start_does_not_take_a_strangers_pid_for_a_running_service(
    settings: Settings, stranger: subprocess.Popen[bytes]
) -> None:
    """`up` after a crash: the pid file names a process that is not the service; it is started, the stranger kept."""
    write_pid_file(settings, "probe", str(stranger.pid))
    service = probe(free_port())
    pid = stack.start(settings, service)
    try:
        assert pid != stranger.pid and stack.healthy(service.health_url)
    finally:
        stack.stop(settings, service)
    assert alive(stranger)


def test_orphans_of_a_killed_service_are_still_ended(settings: Settings) -> None:
    """The record's start time does not stop `up` from ending what a crashed service of the lab's left behind."""
    port = free_port()
    script = (
        "import http.server, subprocess\n"
        "subprocess.Popen(['sleep', '300'])\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    service = stack.Service(
        name="probe", command=[sys.executable, "-c", script], health_url=f"http://127.0.0.1:{port}/"
    )
    pid = stack.start(settings, service)
    try:
        wait_until(lambda: stack._has_other_members(pid), timeout=10)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: stack.pid_of(settings, "probe") is None, timeout=10)
        again = stack.start(settings, service)
        assert again != pid
        wait_until(lambda: not stack._has_other_members(pid), timeout=10)
    finally:
        stack.stop(settings, service)
