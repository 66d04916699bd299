"""No stale answer: `jobs`, the console and `predict` show an output only if it was written for the input as it is now
(the input ETag the output records), and reconcile never deletes the fresh output of an upload that raced it. Against
the session's emulator and its deployed function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from mlops_lab import jobs, reconcile
from mlops_lab.console import views
from mlops_lab.contract import META_INPUT_ETAG, error_key, prediction_key
from tests.support import NOT_FOUND_CODES, Lab, error_code, wait_until

BAD_CSV = b"age\n1\n"  # missing columns: the function writes an error report


def put_input(lab: Lab, key: str, body: bytes) -> str:
    """Upload straight to the input bucket (the function runs on it); the new object's ETag, without quotes."""
    return lab.s3().put_object(Bucket=lab.settings.input_bucket, Key=key, Body=body)["ETag"].strip('"')


def recorded_input_etag(lab: Lab, output_key: str) -> str | None:
    try:
        head = lab.s3().head_object(Bucket=lab.settings.output_bucket, Key=output_key)
    except ClientError as error:
        assert error_code(error) in NOT_FOUND_CODES
        return None
    return head.get("Metadata", {}).get(META_INPUT_ETAG)


def wait_for_answer(lab: Lab, output_key: str, etag: str) -> None:
    wait_until(lambda: recorded_input_etag(lab, output_key) == etag, timeout=60, interval=0.2)


def put_stale_output(lab: Lab, output_key: str, body: bytes, input_etag: str) -> None:
    """An output as the function writes one, but for another version of the input (an earlier upload's, written late)."""
    lab.s3().put_object(
        Bucket=lab.settings.output_bucket, Key=output_key, Body=body, Metadata={META_INPUT_ETAG: input_etag}
    )


EARLIER = "0123456789abcdef0123456789abcdef"  # the ETag of an upload that came before


# -- jobs and the console --------------------------------------------------------------------------------------------


def test_jobs_and_the_console_hide_an_output_of_an_earlier_upload(lab_stack: Lab, sample_csv: Path) -> None:
    key = "staleness/listed.csv"
    etag = put_input(lab_stack, key, sample_csv.read_bytes())
    wait_for_answer(lab_stack, prediction_key(key), etag)

    def listed() -> jobs.Job:
        return next(
            job for job in jobs.list_jobs(lab_stack.settings, lab_stack.aws, cache=jobs.Cache()) if job.key == key
        )

    assert listed().status == "ok"
    # Newer than the input, but written for an earlier version of it: no answer to the file there now.
    put_stale_output(lab_stack, prediction_key(key), b"age,prediction\n1,>50K\n", EARLIER)
    job = listed()
    assert (job.status, job.rows, job.output_uri) == ("pending", None, "")
    part = views.jobs_part(lab_stack.settings, lambda: lab_stack.aws, jobs.Cache())["jobs"]
    assert next(job for job in part.value if job.key == key).status == "pending"


def test_jobs_show_the_output_written_for_this_very_input(lab_stack: Lab, sample_csv: Path) -> None:
    """An error report of an earlier upload, newer than this upload's predictions, does not hide them."""
    key = "staleness/current.csv"
    etag = put_input(lab_stack, key, sample_csv.read_bytes())
    wait_for_answer(lab_stack, prediction_key(key), etag)
    put_stale_output(lab_stack, error_key(key), b'{"reason": "from an earlier upload"}', EARLIER)
    (job,) = [job for job in jobs.list_jobs(lab_stack.settings, lab_stack.aws, cache=jobs.Cache()) if job.key == key]
    assert (job.status, job.rows, job.reason) == ("ok", 500, "")


# -- predict --------------------------------------------------------------------------------------------------------


def test_predict_waits_past_an_output_its_delete_raced(
    lab_stack: Lab, sample_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`predict` uploads a bad file where a good one was; the good one's predictions are written again just after
    the upload's delete of them (a late invocation): predict must answer with the new file's error report."""
    key = "staleness/predict.csv"
    earlier = put_input(lab_stack, key, sample_csv.read_bytes())
    wait_for_answer(lab_stack, prediction_key(key), earlier)
    stale = lab_stack.s3().get_object(Bucket=lab_stack.settings.output_bucket, Key=prediction_key(key))["Body"].read()
    submit = jobs.submit

    def racing_submit(*args: Any, **kwargs: Any) -> str:
        uri = submit(*args, **kwargs)
        put_stale_output(lab_stack, prediction_key(key), stale, earlier)  # the earlier upload's, written late
        return uri

    monkeypatch.setattr(jobs, "submit", racing_submit)
    bad = tmp_path / "predict.csv"
    bad.write_bytes(BAD_CSV)
    result = jobs.predict_file(lab_stack.settings, lab_stack.aws, bad, key=key, out_dir=tmp_path, timeout=60)
    assert result.status == "rejected", result
    assert result.error is not None and result.error["reason"].startswith("missing columns")
    assert result.output_uri.endswith(error_key(key))


# -- reconcile ------------------------------------------------------------------------------------------------------


@pytest.fixture
def only_keys_under(monkeypatch: pytest.MonkeyPatch) -> str:
    """Reconcile sees only this test's keys (the session's buckets hold every other test's inputs too)."""
    folder = "staleness/race/"
    listed = reconcile.list_objects

    def list_objects(s3: Any, bucket: str, prefix: str = "") -> dict[str, reconcile.StoredObject]:
        return {key: item for key, item in listed(s3, bucket, prefix).items() if folder in key}

    monkeypatch.setattr(reconcile, "list_objects", list_objects)
    return folder


def test_reconcile_never_deletes_the_fresh_output_of_an_upload_that_raced_it(
    lab_stack: Lab, sample_csv: Path, only_keys_under: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconcile plans to remove an error report a later success superseded; before it deletes, a new upload of
    the same key is processed and writes its own error report there. That one is the answer now: it stays."""
    key = only_keys_under + "upload.csv"
    good = put_input(lab_stack, key, sample_csv.read_bytes())
    wait_for_answer(lab_stack, prediction_key(key), good)
    put_stale_output(lab_stack, error_key(key), b'{"reason": "from an earlier upload"}', EARLIER)
    planned = reconcile.plan
    raced: dict[str, str] = {}

    def plan_then_an_upload(*args: Any) -> list[reconcile.Action]:
        actions = planned(*args)
        assert reconcile.Action(key, "remove-error-report", "superseded") in actions
        raced["etag"] = put_input(lab_stack, key, BAD_CSV)  # processed between the plan and the delete
        wait_for_answer(lab_stack, error_key(key), raced["etag"])
        return actions

    monkeypatch.setattr(reconcile, "plan", plan_then_an_upload)
    result = reconcile.reconcile(lab_stack.settings, lab_stack.aws)
    assert recorded_input_etag(lab_stack, error_key(key)) == raced["etag"]  # the fresh report survived
    assert result.kept == [error_key(key)]


def test_reconcile_still_removes_what_it_planned_when_nothing_raced(
    lab_stack: Lab, sample_csv: Path, only_keys_under: str
) -> None:
    key = only_keys_under + "quiet.csv"
    good = put_input(lab_stack, key, sample_csv.read_bytes())
    wait_for_answer(lab_stack, prediction_key(key), good)
    put_stale_output(lab_stack, error_key(key), b'{"reason": "from an earlier upload"}', EARLIER)
    result = reconcile.reconcile(lab_stack.settings, lab_stack.aws)
    assert reconcile.Action(key, "remove-error-report", "superseded") in result.actions
    assert recorded_input_etag(lab_stack, error_key(key)) is None and not result.kept
    assert recorded_input_etag(lab_stack, prediction_key(key)) == good


def test_a_delete_is_conditional_on_the_etag_the_plan_saw(lab_stack: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaced between reconcile's HEAD and its DELETE: S3 itself refuses the delete (If-Match), the object stays."""
    s3, bucket = lab_stack.s3(), lab_stack.settings.output_bucket
    key = error_key("staleness/if-match.csv")
    s3.put_object(Bucket=bucket, Key=key, Body=b"old", Metadata={META_INPUT_ETAG: EARLIER})
    planned = reconcile.head_object(s3, bucket, key)
    assert planned is not None
    s3.put_object(Bucket=bucket, Key=key, Body=b"new", Metadata={META_INPUT_ETAG: EARLIER})
    monkeypatch.setattr(reconcile, "head_object", lambda *args: planned)  # the HEAD saw it just before the write
    assert not reconcile.delete_if_unchanged(s3, bucket, planned)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"new"
