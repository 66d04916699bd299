"""A small process supervisor: services as local processes, started detached and tracked by pid files.

Each service is a command, an environment, a health URL and a log file under the state dir; ``start`` launches what is
not running and waits for health, ``stop`` ends a service's whole process group and empties the folders it names.
It knows no service in particular: ``emulator.service``, ``registry.server_service`` and ``ops`` define them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mlops_lab.errors import NotRunning
from mlops_lab.settings import Settings


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""
    url: str = ""
    cleanup: tuple[Path, ...] = ()  # folders emptied when the service stops


class StartError(NotRunning):
    pass


RUN_MARKER = "=== mlops-lab: started"  # a line written to a service's log before each start
_starting: set[int] = set()  # pids this process started that have not been healthy yet


def run_dir(settings: Settings) -> Path:
    return settings.state_dir / "run"


def log_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / "logs" / f"{name}.log"


def _pid_file(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"{name}.pid"


def _recorded_pid(settings: Settings, name: str) -> int | None:
    try:
        return int(_pid_file(settings, name).read_text())
    except (FileNotFoundError, ValueError):
        return None


def pid_of(settings: Settings, name: str) -> int | None:
    """The service's pid while it runs; None once it exited (a killed process that nobody reaped yet, a zombie,
    still answers ``kill -0``: it counts as exited, and is reaped if it is our child)."""
    pid = _recorded_pid(settings, name)
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    if _is_zombie(pid):
        _exited(pid)
        return None
    return pid


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start(settings: Settings, service: Service, *, timeout: float = 60) -> int:
    """Start a service unless it already runs; wait until its health URL answers 200."""
    return wait_healthy(settings, service, launch(settings, service), timeout=timeout)


def launch(settings: Settings, service: Service) -> int:
    """Start a service unless it already runs, without waiting for it (``wait_healthy`` does); its pid."""
    pid = pid_of(settings, service.name)
    if pid is None:
        _end_orphans(settings, service.name)
        if healthy(service.health_url):
            raise StartError(
                f"{service.name}: something else already answers at {service.health_url} (port taken); "
                "stop it or choose another port in settings"
            )
        for folder in service.cleanup:
            folder.mkdir(parents=True, exist_ok=True)
        log = log_path(settings, service.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        run_dir(settings).mkdir(parents=True, exist_ok=True)
        with log.open("ab") as sink:
            sink.write(f"{RUN_MARKER} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            sink.flush()
            process = subprocess.Popen(
                service.command,
                env=service.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: `down` stops it and every worker it spawned
            )
        pid = process.pid
        _starting.add(pid)
        _pid_file(settings, service.name).write_text(str(pid))
    return pid


def wait_healthy(settings: Settings, service: Service, pid: int, *, timeout: float = 60) -> int:
    """Wait until a launched service's health URL answers 200; stop it and raise StartError if it dies or times out.

    A process that was running before (not one this process is starting) and dies now was dying as ``launch``
    looked, killed a moment ago: it passed for a running service. Once it is gone, the service is started afresh."""
    deadline = time.monotonic() + timeout
    while not healthy(service.health_url):
        if pid_of(settings, service.name) is None or _exited(pid):
            if pid not in _starting:
                pid = launch(settings, service)
                continue
            tail = _this_run_log(settings, service.name)[-3000:]
            stop(settings, service)
            raise StartError(f"{service.name} exited during start-up; the end of its log:\n{tail}")
        if time.monotonic() > deadline:
            stop(settings, service)
            raise StartError(f"{service.name} was not healthy at {service.health_url} after {timeout:.0f} s")
        time.sleep(0.1)
    _starting.discard(pid)
    return pid


def _this_run_log(settings: Settings, name: str) -> str:
    """The log of the latest start only (the file keeps every run's; an earlier crash's tail would mislead)."""
    text = log_path(settings, name).read_text(errors="replace")
    return text[text.rfind(RUN_MARKER) :] if RUN_MARKER in text else text


def _end_orphans(settings: Settings, name: str) -> None:
    """A service that died without ``stop`` (killed, crashed) can leave children running in its process group, e.g.
    the emulator's Lambda workers. They belong to a run that is over: end them before starting a new one."""
    pid = _recorded_pid(settings, name)
    if pid is not None and _has_other_members(pid):
        _signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _has_other_members(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    _pid_file(settings, name).unlink(missing_ok=True)


def _exited(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reaps our own child if it died
    except ChildProcessError:
        return False
    return waited == pid


def stop(settings: Settings, service: Service | str, *, timeout: float = 10) -> bool:
    """Stop a service's whole process group; True if something was running."""
    name = service if isinstance(service, str) else service.name
    pid = pid_of(settings, name)
    stopped = False
    if pid is not None:
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _group_alive(pid) and time.monotonic() < deadline:
            _exited(pid)
            time.sleep(0.05)
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
        _exited(pid)
        stopped = True
    else:
        _end_orphans(settings, name)  # its leader is gone; children it left behind are not
    _pid_file(settings, name).unlink(missing_ok=True)
    if not isinstance(service, str):
        for folder in service.cleanup:
            shutil.rmtree(folder, ignore_errors=True)
    return stopped


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie leader keeps the group "alive" until reaped; treat it as gone once it exited.
    return not _is_zombie(pid) or _has_other_members(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def _has_other_members(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, IndexError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and int(stat.parent.name) != pgid and fields[0] != "Z":
            return True
    return False
