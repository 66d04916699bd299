"""`mlops-lab logs`: any service's log, and the function's CloudWatch log group."""

from __future__ import annotations

import contextlib
from enum import StrEnum
from typing import Annotated

import typer

from mlops_lab import logs as lab_logs
from mlops_lab.aws import Aws
from mlops_lab.settings import get_settings

app = typer.Typer()


# The library's list, so a service added there is a choice here too.
Target = StrEnum("Target", {name: name for name in lab_logs.TARGETS})  # type: ignore[misc]
DEFAULT_TARGET = Target(lab_logs.FUNCTION)


@app.command()
def logs(
    target: Annotated[
        Target, typer.Argument(help="Whose log: a service's file, or the function's log group.")
    ] = DEFAULT_TARGET,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C stops).")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many of the latest lines to show first.")] = 50,
    since: Annotated[float, typer.Option(help="function: minutes of the log group to read.")] = 60,
) -> None:
    """Show a service's log (emulator, mlflow, sagemaker-emulator, api, console: their files in the state dir) or the function's
    (CloudWatch group /aws/lambda/<function>, on the emulator or AWS; each handler line has its request id)."""
    settings = get_settings()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a follow: that is no failure
        if target == DEFAULT_TARGET:
            aws = Aws()
            typer.echo(f"Talking to {aws.describe(account=True)}", err=True)
            events = lab_logs.function_events(settings, aws, since_s=since * 60, limit=lines)
            for event in events:
                _print_event(event)
            if follow:
                typer.echo(f"-- following {lab_logs.log_group(settings)} on {aws.describe()} (Ctrl-C stops)", err=True)
                shown = {(e.event_id, e.stream, e.message) for e in events}
                for event in lab_logs.follow_function(settings, aws, since_s=60):
                    if (event.event_id, event.stream, event.message) not in shown:
                        _print_event(event)
            return
        path = lab_logs.service_log(settings, target.value)
        tail, offset = lab_logs.tail(path, lines)
        for line in tail:
            print(line)
        if follow:
            typer.echo(f"-- following {path} (Ctrl-C stops)", err=True)
            for line in lab_logs.follow(path, offset):
                print(line, flush=True)


def _print_event(event: lab_logs.LogEvent) -> None:
    print(f"{event.when:%Y-%m-%d %H:%M:%S} {event.stream[-12:]}  {event.message}", flush=True)
