"""The supervisor after a crash: a killed service is seen as gone, what it left running is ended, and a failed
start shows its own log, not an earlier run's. The services here are small shell commands on loopback."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from mlops_lab import stack
from mlops_lab.settings import Settings
from tests.support import free_port, wait_until


def http_service(port: int, *, with_child: bool = False, fail: bool = False) -> stack.Service:
    """A tiny health server on loopback; with a child process in its group (as the emulator's Lambda workers are)."""
    script = (
        "import http.server, subprocess, sys\n"
        + ("subprocess.Popen(['sleep', '300'])\n" if with_child else "")
        + ("print('cannot start: configuration broken', flush=True); sys.exit(3)\n" if fail else "")
        + f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    return stack.Service(name="probe", command=[sys.executable, "-c", script], health_url=f"http://127.0.0.1:{port}/")


def group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, state_dir=tmp_path)


def test_a_killed_service_is_gone_and_up_ends_its_orphans(settings: Settings) -> None:
    service = http_service(free_port(), with_child=True)
    pid = stack.start(settings, service)
    wait_until(lambda: len(group_members(pid)) == 2, timeout=10)
    try:
        os.kill(pid, signal.SIGKILL)  # the leader only: its child lives on, as Lambda workers do
        # Our own child: a zombie until reaped. It still answers `kill -0`, but it is not running.
        wait_until(lambda: stack.pid_of(settings, service.name) is None, timeout=10)
        (orphan,) = group_members(pid)
        again = stack.start(settings, service)
        assert again != pid and stack.healthy(service.health_url)
        assert wait_until(lambda: not group_members(pid), timeout=10)  # the old run's child was ended
        assert orphan not in group_members(again)
    finally:
        stack.stop(settings, service)
    assert not group_members(pid) and stack.pid_of(settings, service.name) is None


def test_a_service_killed_a_moment_ago_is_started_afresh(settings: Settings) -> None:
    """`up` right after a kill: the dying process still looks alive for an instant; once gone, it is started."""
    service = http_service(free_port())
    pid = stack.start(settings, service)
    os.kill(pid, signal.SIGKILL)
    started = stack.wait_healthy(settings, service, pid, timeout=30)  # as `start` does when it found it "running"
    try:
        assert started != pid and stack.healthy(service.health_url)
    finally:
        stack.stop(settings, service)


def test_a_failed_start_shows_this_runs_log(settings: Settings) -> None:
    port = free_port()
    good = http_service(port)
    stack.start(settings, good)
    stack.stop(settings, good)
    stack.log_path(settings, "probe").open("a").write("an earlier run's last words\n")
    with pytest.raises(stack.StartError) as caught:
        stack.start(settings, http_service(port, fail=True), timeout=20)
    message = str(caught.value)
    assert "exited during start-up" in message and "configuration broken" in message
    assert "earlier run" not in message
    assert stack.pid_of(settings, "probe") is None
