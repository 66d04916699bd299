"""`mlops-lab logs`: the services' log files, and the function's CloudWatch log group on the emulator, where each
handler line carries its invocation's request id."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from mlops_lab import logs, stack
from mlops_lab.cli import app
from mlops_lab.contract import prediction_key
from mlops_lab.errors import ExitCode, LabError
from mlops_lab.settings import Settings
from tests.support import Lab, LambdaContext, wait_for_output

runner = CliRunner()


def test_tail_gives_the_last_lines_and_where_the_file_ends(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {i}\n" for i in range(100_000)))
    lines, offset = logs.tail(path, 3)
    assert lines == ["line 99997", "line 99998", "line 99999"] and offset == path.stat().st_size
    assert logs.tail(path, 0)[0] == []


def test_follow_yields_what_is_appended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "POLL_S", 0.01)
    path = tmp_path / "x.log"
    path.write_text("old\n")
    _, offset = logs.tail(path, 10)
    with path.open("a") as handle:
        handle.write("new 1\nnew 2\npart")
    got: list[str] = []
    for line in logs.follow(path, offset, stop=lambda: len(got) >= 2):
        got.append(line)
    assert got == ["new 1", "new 2"]  # the unfinished last line waits for its newline


def test_a_service_that_never_ran_has_no_log(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, state_dir=tmp_path)
    with pytest.raises(LabError) as caught:
        logs.service_log(settings, "api")
    assert caught.value.exit_code == ExitCode.NOT_RUNNING and "mlops-lab up" in str(caught.value)


def test_each_handler_line_carries_the_request_id(handler_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = io.StringIO()
    capture = logging.StreamHandler(sink)
    capture.setFormatter(handler_module.JsonFormatter())
    handler_module.logger.addHandler(capture)

    def handle(*_: object) -> dict:
        handler_module.log(logging.INFO, "predictions written", rows=3)
        return {"results": []}

    monkeypatch.setattr(handler_module, "handle", handle)
    try:
        handler_module.handler({"Records": []}, LambdaContext(aws_request_id="req-123"))
        handler_module.log(logging.INFO, "outside an invocation")
    finally:
        handler_module.logger.removeHandler(capture)
    inside, outside = (json.loads(line) for line in sink.getvalue().splitlines())
    assert inside == {"level": "INFO", "message": "predictions written", "request_id": "req-123", "rows": 3}
    assert "request_id" not in outside


def test_logs_function_reads_the_log_group_on_the_emulator(cli_env: None, lab_stack: Lab, sample_csv: Path) -> None:
    settings = lab_stack.settings
    key = "logs/sample.csv"
    lab_stack.s3().upload_file(str(sample_csv), settings.input_bucket, key)
    wait_for_output(lab_stack, prediction_key(key))

    def handler_lines() -> list[dict]:
        found = []
        for event in logs.function_events(settings, lab_stack.aws, since_s=900):
            try:
                entry = json.loads(event.message)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("input") == f"s3://{settings.input_bucket}/{key}":
                found.append(entry)
        return found

    deadline = time.monotonic() + 60  # CloudWatch Logs is eventually consistent: bounded wait
    while not (lines := handler_lines()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lines, "the handler's 'predictions written' line never reached the log group"
    assert all(line.get("request_id") for line in lines), lines

    result = runner.invoke(app, ["logs", "function", "--lines", "200", "--since", "15"])
    assert result.exit_code == 0, result.output
    assert "predictions written" in result.output and lines[0]["request_id"] in result.output


def test_logs_function_follow_sees_a_new_invocation(lab_stack: Lab, sample_csv: Path) -> None:
    settings = lab_stack.settings
    key = f"logs/follow-{time.time_ns()}.csv"
    lab_stack.s3().upload_file(str(sample_csv), settings.input_bucket, key)
    deadline = time.monotonic() + 90
    seen = []
    for event in logs.follow_function(settings, lab_stack.aws, since_s=30, stop=lambda: time.monotonic() > deadline):
        if key in event.message:
            seen.append(event)
            break
    assert seen, f"no log line about {key} within 90 s"


def test_logs_of_a_service_file(cli_env: None, lab_stack: Lab) -> None:
    path = stack.log_path(lab_stack.settings, "emulator")
    assert path.exists()
    result = runner.invoke(app, ["logs", "emulator", "-n", "5"])
    assert result.exit_code == 0, result.output
    assert 0 < len(result.output.splitlines()) <= 5
    missing = runner.invoke(app, ["logs", "console"])
    assert missing.exit_code == ExitCode.NOT_RUNNING and "No log for console" in missing.output
