"""The lab keeps its state and loses no upload: a burst under the concurrency bound, a crash of the emulator,
`down`/`up` with a registry, a failing handler and its redrive.

These tests stop, kill and restart their emulator, so they run their own stack (emulator and mlflow, in a temporary
state dir, on free loopback ports) rather than the session's.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlops_lab import emulator, jobs, model, ops, reconcile, recovery, registry, services, stack, training
from mlops_lab.contract import META_INPUT_ETAG, META_ROWS, error_key, prediction_key
from mlops_lab.synthetic import generate
from tests.support import (
    Lab,
    ProcessGroupMemory,
    isolated_environment,
    lab_settings,
    report,
    restoring_live_model,
    running_lab,
    wait_until,
)

SOAK_FILES = 200
SOAK_BAD = 20
MEMORY_LIMIT_BYTES = 8 * 1024**3
BAD_BODIES = [
    b"",
    b"age,work_class\n39,Private\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b'{"age": 39}',
    "age,work_class\n39,Privé\n".encode("latin-1"),
]


@pytest.fixture(scope="module")
def durable_lab(tmp_path_factory: pytest.TempPathFactory, trained_model_path: Path) -> Iterator[Lab]:
    """Emulator + mlflow of this module's own, brought up by `up`'s recipe; stopped (whatever runs) at the end."""
    settings = lab_settings(tmp_path_factory.mktemp("durable"), prefix="durable")
    with (
        isolated_environment(MLFLOW_DISABLE_TELEMETRY="true"),
        running_lab(settings, [emulator.SERVICE_NAME, registry.SERVICE_NAME], model=trained_model_path) as lab,
    ):
        yield lab


def make_uploads(prefix: str, seed: int) -> dict[str, tuple[bytes, int | None]]:
    """SOAK_FILES small CSVs under ``prefix``: key -> (body, rows it holds, or None for the SOAK_BAD bad ones)."""
    uploads: dict[str, tuple[bytes, int | None]] = {}
    for i in range(SOAK_FILES):
        key = f"{prefix}/{i:03d}.csv"
        if i % (SOAK_FILES // SOAK_BAD) == 0:
            uploads[key] = (BAD_BODIES[i % len(BAD_BODIES)], None)
        else:
            rows = 5 + (i * 7) % 60
            body = generate(rows, seed=seed + i, with_label=False).to_csv(index=False).encode()
            uploads[key] = (body, rows)
    assert sum(rows is None for _, rows in uploads.values()) == SOAK_BAD
    return uploads


def upload_all(lab: Lab, uploads: dict[str, tuple[bytes, int | None]]) -> None:
    s3 = lab.s3()
    with ThreadPoolExecutor(max_workers=10) as pool:  # botocore's default connection pool holds 10
        list(
            pool.map(
                lambda key: s3.put_object(Bucket=lab.settings.input_bucket, Key=key, Body=uploads[key][0]), uploads
            )
        )


def outputs_under(lab: Lab, prefix: str) -> dict[str, list[str]]:
    """input key -> the output keys it has (predictions and/or error report)."""
    s3, found = lab.s3(), {}
    for output_prefix in (prediction_key(prefix), error_key(prefix).removesuffix(".json")):
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=lab.settings.output_bucket, Prefix=output_prefix
        ):
            for item in page.get("Contents", []):
                output = item["Key"]
                source = output.removeprefix("predictions/").removeprefix("errors/").removesuffix(".json")
                found.setdefault(source, []).append(output)
    return found


def failed_inputs(lab: Lab, prefix: str) -> list[str]:
    return [
        key
        for failure in recovery.list_failures(lab.settings, lab.aws)
        for _, key in failure.inputs
        if key.startswith(prefix)
    ]


def assert_complete(lab: Lab, uploads: dict[str, tuple[bytes, int | None]], prefix: str) -> None:
    """Every input has exactly one output, of the right kind, recording its input; good ones the exact row count;
    the inputs are untouched."""
    s3, settings = lab.s3(), lab.settings
    outputs = outputs_under(lab, prefix)
    assert sorted(outputs) == sorted(uploads), set(uploads) ^ set(outputs)
    doubled = {key: keys for key, keys in outputs.items() if len(keys) != 1}
    assert not doubled, doubled
    for key, (body, rows) in uploads.items():
        stored = s3.get_object(Bucket=settings.input_bucket, Key=key)
        assert stored["Body"].read() == body, f"input {key} changed"
        expected = prediction_key(key) if rows is not None else error_key(key)
        assert outputs[key] == [expected], (key, outputs[key])
        metadata = s3.head_object(Bucket=settings.output_bucket, Key=expected)["Metadata"]
        assert metadata[META_INPUT_ETAG] == stored["ETag"].strip('"')
        if rows is not None:
            assert metadata[META_ROWS] == str(rows), key


def test_soak_every_upload_ends_in_one_output_or_one_captured_failure(durable_lab: Lab) -> None:
    """200 uploads at once (20 of them bad) against a concurrency bound of 10: each ends in its output or in the
    failure queue, never nowhere; reconcile then completes the captured ones: exactly 200 outputs."""
    uploads = make_uploads("soak", seed=100)
    with ProcessGroupMemory(stack.pid_of(durable_lab.settings, emulator.SERVICE_NAME)) as memory:
        started = time.monotonic()
        upload_all(durable_lab, uploads)

        def settled() -> bool:
            return len(outputs_under(durable_lab, "soak/")) + len(failed_inputs(durable_lab, "soak/")) >= SOAK_FILES

        wait_until(
            settled, timeout=300, interval=1, message=lambda: f"{len(outputs_under(durable_lab, 'soak/'))} outputs"
        )
        outputs, failed = outputs_under(durable_lab, "soak/"), failed_inputs(durable_lab, "soak/")
        assert not set(outputs) & set(failed), "an upload has both an output and a failure record"
        assert sorted([*outputs, *failed]) == sorted(uploads), "an upload ended in neither an output nor a failure"
        through_events = time.monotonic() - started
        result = reconcile.reconcile(durable_lab.settings, durable_lab.aws)
    assert {a.key for a in result.actions if a.action == "rerun"} == set(failed)
    assert result.cleared_failures == len(set(failed))
    assert_complete(durable_lab, uploads, "soak/")
    assert failed_inputs(durable_lab, "soak/") == []
    report(
        f"soak: {SOAK_FILES} uploads ({SOAK_BAD} bad): {len(outputs)} completed through S3 events in "
        f"{through_events:.1f} s, {len(failed)} captured as failures and completed by reconcile; "
        f"peak memory (emulator and its workers) {memory.peak_bytes / 2**20:,.0f} MiB with "
        f"{memory.peak_processes} processes"
    )
    assert memory.peak_bytes < MEMORY_LIMIT_BYTES


def test_emulator_killed_mid_run_then_up_and_reconcile_loses_nothing(durable_lab: Lab) -> None:
    """SIGKILL to the emulator (its Lambda workers left running) while 200 uploads are being scored; `up` starts it
    again on its persisted state; reconcile completes the rest: all 200 outputs, none twice."""
    settings = durable_lab.settings
    uploads = make_uploads("crash", seed=300)
    upload_all(durable_lab, uploads)
    wait_until(lambda: len(outputs_under(durable_lab, "crash/")) >= 10, timeout=120, interval=0.2)
    os.kill(stack.pid_of(settings, emulator.SERVICE_NAME), signal.SIGKILL)

    lab = ops.bring_up(settings, services=[emulator.SERVICE_NAME])  # what `mlops-lab up` does
    assert stack.pid_of(settings, emulator.SERVICE_NAME) is not None
    s3 = lab.aws.client("s3")
    stored = {item["Key"] for item in s3.list_objects_v2(Bucket=settings.input_bucket, Prefix="crash/")["Contents"]}
    assert stored == set(uploads), "uploads acknowledged before the crash must survive it"
    # An output is never deleted: an upload without one now had none when the emulator was killed.
    unfinished = set(uploads) - set(outputs_under(durable_lab, "crash/"))
    assert unfinished, "every upload had its output before the SIGKILL: the crash interrupted nothing"
    result = reconcile.reconcile(settings, lab.aws)
    reran = {a.key for a in result.actions if a.action == "rerun"}
    assert unfinished <= reran, f"reconcile left {sorted(unfinished - reran)[:5]} without a rerun"
    assert_complete(durable_lab, uploads, "crash/")
    assert reconcile.reconcile(settings, lab.aws, dry_run=True).actions == []
    report(
        f"crash: {len(unfinished)} of {SOAK_FILES} uploads had no output when the emulator was killed; reconcile "
        f"re-ran {len(reran)} inputs (of {result.inputs} in the bucket)"
    )


def test_down_up_keeps_the_promoted_model_its_registry_and_rollback(durable_lab: Lab) -> None:
    settings, aws = durable_lab.settings, durable_lab.aws
    first = training.train_and_log(settings, rows=3000, seed=1, run_name="durable-1")
    second = training.train_and_log(settings, rows=3000, seed=2, run_name="durable-2")
    registry.promote(settings, aws, second.version)
    s3 = aws.client("s3")
    artifacts = {
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.model_bucket, Prefix="mlflow/")
        for item in page.get("Contents", [])
    }
    assert artifacts

    assert set(services.stop_services(settings)) == {emulator.SERVICE_NAME, registry.SERVICE_NAME}
    lab = ops.bring_up(settings, services=[emulator.SERVICE_NAME, registry.SERVICE_NAME])
    assert {c.action for c in lab.changes} == {"unchanged"}, [c for c in lab.changes if c.action != "unchanged"]
    assert model.live_version(settings, lab.aws) == second.version
    versions = {row.version: row for row in registry.list_versions(settings, lab.aws)}
    assert {first.version, second.version} <= set(versions)
    kept = {
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.model_bucket, Prefix="mlflow/")
        for item in page.get("Contents", [])
    }
    assert artifacts <= kept
    rollback = registry.promote(settings, lab.aws, first.version)  # reads version 1's ONNX from the kept artifacts
    assert rollback.previous == second.version
    assert model.live_version(settings, lab.aws) == first.version


def test_failing_handler_lands_in_the_failure_queue_and_redrive_completes_it(durable_lab: Lab, tmp_path: Path) -> None:
    settings, aws = durable_lab.settings, durable_lab.aws
    with restoring_live_model(durable_lab):
        aws.client("s3").delete_object(Bucket=settings.model_bucket, Key=settings.model_key)
        data = tmp_path / "in.csv"
        data.write_bytes(generate(25, seed=9, with_label=False).to_csv(index=False).encode())
        # `mlops-lab predict` stops waiting as soon as the event lands in the failure queue, and says why.
        with pytest.raises(jobs.PredictFailed) as caught:
            jobs.predict_file(settings, aws, data, key="redrive/in.csv", out_dir=tmp_path, timeout=120)
        failure = caught.value.failure
        assert "redrive" in str(caught.value) and "s3://durable-input/redrive/in.csv" in str(caught.value)
        assert failure.inputs == ((settings.input_bucket, "redrive/in.csv"),)
        assert failure.attempts == settings.lambda_retry_attempts + 1
        assert "404" in failure.error or "Not Found" in failure.error, failure.error
        assert failure.when is not None
        assert [f.message_id for f in recovery.list_failures(settings, aws)] == [failure.message_id]
        assert outputs_under(durable_lab, "redrive/") == {}
        # Still failing: the record is kept.
        still = recovery.redrive(settings, aws)
        assert [f.message_id for f, _ in still.still_failing] == [failure.message_id]
    result = recovery.redrive(settings, aws)
    assert [f.message_id for f, _ in result.completed] == [failure.message_id]
    assert [(r.status, r.detail) for _, reruns in result.completed for r in reruns] == [("ok", "25 rows")]
    assert recovery.list_failures(settings, aws) == []
    assert outputs_under(durable_lab, "redrive/") == {"redrive/in.csv": [prediction_key("redrive/in.csv")]}
