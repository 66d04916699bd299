"""The lab's logs: each embedded service's log file, and the function's CloudWatch log group.

``emulator``, ``mlflow``, ``api`` and ``console`` write to ``<state dir>/logs/<name>.log`` (``stack.log_path``); the
function writes to CloudWatch Logs, group ``/aws/lambda/<function>``, on AWS and on the emulator alike (MiniStack
implements CloudWatch Logs), read here through the SDK's ``logs`` client. Each of the handler's lines is a JSON
object with the invocation's ``request_id``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from botocore.exceptions import ClientError

from mlops_lab import stack
from mlops_lab.aws import Aws, error_code
from mlops_lab.errors import ExitCode, LabError
from mlops_lab.settings import Settings

FILE_SERVICES = ("emulator", "mlflow", "sagemaker-emulator", "api", "console")
FUNCTION = "function"
TARGETS = (*FILE_SERVICES, FUNCTION)
POLL_S = 1.0  # how often a follow looks for new lines
TAIL_BLOCK = 64 * 1024


def log_group(settings: Settings) -> str:
    return settings.log_group


# -- the services' files ----------------------------------------------------------------------------------------


def service_log(settings: Settings, name: str) -> Path:
    if name not in FILE_SERVICES:
        raise ValueError(f"unknown service {name!r}: choose from {', '.join(TARGETS)}")
    path = stack.log_path(settings, name)
    if not path.exists():
        raise LabError(
            f"No log for {name} at {path}: it has not run in this lab (`mlops-lab up` starts it; under docker "
            f"compose: `docker compose logs {name}`).",
            ExitCode.NOT_RUNNING,
        )
    return path


def tail(path: Path, lines: int) -> tuple[list[str], int]:
    """The last ``lines`` lines of a file and the offset where it ends (to follow it from)."""
    with path.open("rb") as handle:
        end = handle.seek(0, 2)
        start, chunk = end, b""
        while start > 0 and chunk.count(b"\n") <= lines:
            start = max(0, start - TAIL_BLOCK)
            handle.seek(start)
            chunk = handle.read(end - start)
    text = chunk.decode("utf-8", errors="replace").splitlines()
    return (text[-lines:] if lines > 0 else []), end


def follow(path: Path, offset: int, *, stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """The lines appended to ``path`` after ``offset``, as they come, until ``stop()`` (a new start of the service
    truncates nothing: stack appends, so the offset stays valid)."""
    partial = b""
    while not stop():
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            if size < offset:  # the file was replaced (reset): start at its beginning
                offset = 0
            handle.seek(offset)
            data = handle.read()
        offset += len(data)
        partial += data
        *complete, partial = partial.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", errors="replace")
        if not data:
            time.sleep(POLL_S)


# -- the function's log group -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEvent:
    when: datetime
    stream: str
    message: str
    event_id: str = ""


def function_events(
    settings: Settings, aws: Aws, *, since_s: float = 3600, start_ms: int | None = None, limit: int | None = None
) -> list[LogEvent]:
    """The function's log events since ``start_ms`` (default: ``since_s`` ago), oldest first; the last ``limit``."""
    client = aws.client("logs")
    start = start_ms if start_ms is not None else int((time.time() - since_s) * 1000)
    events: list[LogEvent] = []
    kwargs = {"logGroupName": log_group(settings), "startTime": start, "interleaved": True}
    try:
        while True:
            page = client.filter_log_events(**kwargs)
            for event in page.get("events", []):
                events.append(
                    LogEvent(
                        datetime.fromtimestamp(event["timestamp"] / 1000, UTC),
                        event.get("logStreamName", ""),
                        event.get("message", "").rstrip("\n"),
                        event.get("eventId", ""),
                    )
                )
            token = page.get("nextToken")
            if not token or token == kwargs.get("nextToken"):
                break
            kwargs["nextToken"] = token
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            raise LabError(
                f"No log group {log_group(settings)} yet: the function has not run ({aws.describe()}). Upload a CSV "
                "(`mlops-lab predict FILE`), then look again.",
                ExitCode.NOT_RUNNING,
            ) from None
        raise
    events.sort(key=lambda e: (e.when, e.event_id))
    return events[-limit:] if limit else events


def follow_function(
    settings: Settings, aws: Aws, *, since_s: float = 600, stop: Callable[[], bool] = lambda: False
) -> Iterator[LogEvent]:
    """The function's log events as they arrive (polling), each once, until ``stop()``."""
    seen: dict[tuple[str, str, str], int] = {}  # events already shown (of the newest millisecond on) -> their time
    start = int((time.time() - since_s) * 1000)
    while not stop():
        try:
            events = function_events(settings, aws, start_ms=start)
        except LabError:  # no log group yet: the first invocation creates it
            events = []
        fresh = []
        for event in events:
            millis = int(event.when.timestamp() * 1000)
            identity = (event.event_id, event.stream, f"{millis} {event.message}")
            if identity not in seen:
                seen[identity] = millis
                fresh.append(event)
        yield from fresh
        if events:
            # From the newest millisecond seen (its events are told apart by `seen`): nothing late is missed.
            start = max(seen.values())
            seen = {identity: millis for identity, millis in seen.items() if millis >= start}
        if not fresh:
            time.sleep(POLL_S)
