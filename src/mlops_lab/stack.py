"""A small process supervisor: services as local processes, started detached and tracked by pid files.

Each service is a command, an environment, a health URL and a log file under the state dir; ``start`` launches what is
not running and waits for health, ``stop`` ends a service's whole process group and empties the folders it names.
It knows no service in particular: ``emulator.service``, ``registry.server_service`` and ``ops`` define them.

What it signals and deletes is only ever the lab's own:

- A pid file records the process's pid, its start time (``/proc/<pid>/stat`` field 22, in clock ticks since boot)
  and its command line. A pid is trusted only while the process under it has both: a pid file left behind by a
  crash, whose pid now belongs to something else, makes the service "not running", and nothing is signalled.
- The state dir carries a marker file (``.mlops-lab-state``) from the moment the lab first writes to it; every
  recursive delete (``remove_tree``: `reset`, a service's temporary folders, the emulator's venv rebuild) refuses a
  folder outside a marked one.
- ``lab_lock`` (``fcntl.flock`` on ``<state dir>/lab.lock``) makes a second `up` (or `reset`) on the same state dir
  fail at once instead of racing the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mlops_lab.errors import ExitCode, LabError, NotRunning
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


class NotTheLabs(LabError):
    """A folder the lab was asked to delete (or replace) that it did not make."""

    exit_code = ExitCode.REFUSED


class LabBusy(LabError):
    """Another `up` (or `reset`) holds the state dir's lock."""

    exit_code = ExitCode.CONFLICT


RUN_MARKER = "=== mlops-lab: started"  # a line written to a service's log before each start
STATE_MARKER = ".mlops-lab-state"  # in a state dir the lab made (or found holding nothing but its own files)
# What the lab itself puts in a state dir (the default one also holds the venv and the builds): a folder holding only
# these, from before the lab marked its folders, is taken for the lab's.
LAB_ENTRIES = frozenset(
    {"run", "logs", "emulator", "mlflow", "models", "data", "results", "env.sh", "lab.lock", "build"}
    | {"emulator-venv", "artifacts"}
)
LOCK_FILE = "lab.lock"
_starting: set[int] = set()  # pids this process started that have not been healthy yet


def run_dir(settings: Settings) -> Path:
    return settings.state_dir / "run"


def log_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / "logs" / f"{name}.log"


def _pid_file(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"{name}.pid"


# -- which process is the lab's -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessRecord:
    """What a pid file says: the pid, and the start time and command line of the process the lab started there."""

    pid: int
    start: int | None  # /proc/<pid>/stat field 22; None in a pid file of an older lab (the pid alone)
    cmdline: tuple[str, ...] | None

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "start": self.start, "cmdline": list(self.cmdline or ())})


def process_identity(pid: int) -> tuple[int, tuple[str, ...]] | None:
    """The start time (clock ticks after boot, /proc/<pid>/stat field 22) and command line of a live process, or None
    when there is no such process (or only its zombie). The command line is empty while the process exits (its
    memory, which holds it, is gone before it is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19]), tuple(arg.decode(errors="surrogateescape") for arg in raw.split(b"\0")[:-1])


def _read_record(settings: Settings, name: str) -> ProcessRecord | None:
    try:
        text = _pid_file(settings, name).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        if text.isdigit():  # an older lab's pid file: the pid alone
            return ProcessRecord(int(text), None, None)
        data = json.loads(text)
        return ProcessRecord(int(data["pid"]), int(data["start"]), tuple(str(a) for a in data["cmdline"]))
    except (ValueError, KeyError, TypeError):
        return None


def _write_record(settings: Settings, name: str, pid: int, command: Sequence[str]) -> None:
    """The pid file of a process just started. Popen returns once the exec began, which is a moment before the new
    program's command line can be read (it reads empty until then): that moment is waited for, briefly."""
    deadline = time.monotonic() + 2
    identity = process_identity(pid)
    while identity is not None and not identity[1] and time.monotonic() < deadline:
        time.sleep(0.005)
        identity = process_identity(pid)
    start, cmdline = identity if identity else (None, tuple(command))
    path = _pid_file(settings, name)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(ProcessRecord(pid, start, cmdline).to_json())
    os.replace(temporary, path)  # a reader sees the old record or the new one, never half of one


def _is_ours(record: ProcessRecord, command: Sequence[str] | None = None) -> bool:
    """Is the process now at ``record.pid`` the one the lab started (same start time and command line)? A pid file of
    an older lab holds no start time: its process counts only when its command line is ``command`` exactly."""
    identity = process_identity(record.pid)
    if identity is None:
        return False
    start, cmdline = identity
    if record.start is None:
        return command is not None and cmdline == tuple(command)
    # The start time alone already tells a reused pid; a command line reads empty while its process exits.
    return start == record.start and (cmdline == record.cmdline or not cmdline or not record.cmdline)


def pid_of(settings: Settings, name: str, command: Sequence[str] | None = None) -> int | None:
    """The service's pid while the process the lab started for it runs; None once it exited (a killed process that
    nobody reaped yet, a zombie, counts as exited, and is reaped if it is our child) or when the pid file's pid now
    belongs to another process (its start time or command line differ: that one is never signalled)."""
    record = _read_record(settings, name)
    if record is None:
        return None
    if _is_zombie(record.pid):
        _exited(record.pid)
        return None
    return record.pid if _is_ours(record, command) else None


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
    claim_state_dir(settings)
    pid = pid_of(settings, service.name, service.command)
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
        _write_record(settings, service.name, pid, service.command)
    return pid


def wait_healthy(settings: Settings, service: Service, pid: int, *, timeout: float = 60) -> int:
    """Wait until a launched service's health URL answers 200; stop it and raise StartError if it dies or times out.

    A process that was running before (not one this process is starting) and dies now was dying as ``launch``
    looked, killed a moment ago: it passed for a running service. Once it is gone, the service is started afresh."""
    deadline = time.monotonic() + timeout
    while not healthy(service.health_url):
        if pid_of(settings, service.name, service.command) is None or _exited(pid):
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
    the emulator's Lambda workers. They belong to a run that is over: end them before starting a new one.

    Only when the group is still the one the lab started: its leader is gone (a live process under the recorded pid
    is another one, whose group is its own) and each member started after the recorded leader did. A pid file of
    an older lab, with no start time, ends nothing."""
    record = _read_record(settings, name)
    if (
        record is not None
        and record.start is not None
        and process_identity(record.pid) is None
        and _has_other_members(record.pid, started_after=record.start)
    ):
        _signal_group(record.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _has_other_members(record.pid) and time.monotonic() < deadline:
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
    pid = pid_of(settings, name, None if isinstance(service, str) else service.command)
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
            with contextlib.suppress(NotTheLabs, OSError):  # not the lab's folder: left as it is
                remove_tree(folder, owner=settings.state_dir)
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


def _has_other_members(pgid: int, *, started_after: int | None = None) -> bool:
    """Does process group ``pgid`` hold a live process besides its leader (with ``started_after``: every such
    process started at or after that time, else False: the group is not the one that leader made)?"""
    found = False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, IndexError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and int(stat.parent.name) != pgid and fields[0] != "Z":
            if started_after is not None and int(fields[19]) < started_after:
                return False
            found = True
    return found


# -- the lab's own folders ----------------------------------------------------------------------------------------


def claim_state_dir(settings: Settings) -> Path:
    """Create the state dir if needed and mark it as the lab's (``STATE_MARKER``), unless it already holds files the
    lab did not put there: then it stays unmarked, the lab still uses it, and nothing in it is ever deleted."""
    root = settings.state_dir
    marker = root / STATE_MARKER
    if marker.is_file():
        return root
    if root.is_dir() and any(entry.name not in LAB_ENTRIES for entry in root.iterdir()):
        return root
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        "This folder is the state of an mlops-lab (its emulator's, mlflow's, logs and pid files).\n"
        "`mlops-lab reset` deletes what the lab keeps in it; the lab deletes nothing in a folder without this file.\n"
    )
    return root


def is_marked(folder: Path, marker: str = STATE_MARKER) -> bool:
    return (folder / marker).is_file()


def remove_tree(path: Path, *, owner: Path, markers: Sequence[str] = (STATE_MARKER,)) -> None:
    """``shutil.rmtree(path)``, only when ``owner`` carries one of ``markers`` and ``path`` is ``owner`` or inside it
    (symbolic links resolved: a link out of it is not inside it); NotTheLabs otherwise, and nothing is deleted."""
    if not any(is_marked(owner, marker) for marker in markers):
        raise NotTheLabs(
            f"{owner} is not a folder the lab made (no {markers[0]} in it): the lab deletes nothing there. If it is "
            f"the lab's (made before the lab marked its folders), create {owner / markers[0]} and run the command "
            "again; otherwise delete what you mean to by hand."
        )
    inside, root = path.resolve(), owner.resolve()
    if inside != root and root not in inside.parents:
        raise NotTheLabs(f"{path} is not inside {owner}: the lab deletes nothing outside its own folders")
    if path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def lab_lock(settings: Settings, command: str = "up") -> Iterator[None]:
    """Hold ``<state dir>/lab.lock`` (``fcntl.flock``, exclusive) for the duration: a second `up` or `reset` on the
    same state dir fails at once (LabBusy) instead of racing this one. The kernel drops the lock when the holder
    exits, however it ends: a stale lock file never blocks anything."""
    claim_state_dir(settings)
    path = settings.state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise LabBusy(
                f"another `mlops-lab up` or `reset` is running on {settings.state_dir} ({holder}): wait for it to "
                "finish, or stop it, then run this again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, `mlops-lab {command}`\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
