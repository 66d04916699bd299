"""Reconcile's plan, the failure records it and redrive read, and the events they re-run: pure, no server.

The same operations against a real emulator (a burst, a crash, a failing handler) are in tests/test_durability.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest

from mlops_lab import emulator, services
from mlops_lab.contract import error_key, prediction_key
from mlops_lab.reconcile import Action, StoredObject, is_current, plan
from mlops_lab.recovery import event_inputs, failure_from_message, s3_event
from mlops_lab.settings import Settings

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def stored(key: str, etag: str = "e1", *, at: int = 0, input_etag: str | None = None) -> StoredObject:
    return StoredObject(key, etag, T0 + timedelta(seconds=at), 10, input_etag)


# -- plan: what reconcile does about each input ---------------------------------------------------------------


def test_missing_and_stale_outputs_are_rerun_current_ones_left_alone() -> None:
    inputs = {
        "done.csv": stored("done.csv", "a"),
        "new.csv": stored("new.csv", "b"),
        "replaced.csv": stored("replaced.csv", "c2"),
    }
    outputs = {
        prediction_key("done.csv"): stored(prediction_key("done.csv"), at=5, input_etag="a"),
        # Written for the file that was under this key before (newer than the replacement, but of another ETag).
        prediction_key("replaced.csv"): stored(prediction_key("replaced.csv"), at=5, input_etag="c1"),
    }
    assert plan(inputs, outputs) == [
        Action("new.csv", "rerun", "missing"),
        Action("replaced.csv", "rerun", "stale"),
    ]


def test_reconcile_reruns_an_output_that_records_no_input_etag() -> None:
    """An output that records no input ETag (an older handler's, or one whose metadata an emulator's crash lost) is
    re-run by reconcile, however new: re-running is safe, trusting a half-written output is not. Listings (jobs,
    the console) still show a newer one, by time."""
    inputs = {"old.csv": stored("old.csv", at=10), "fresh.csv": stored("fresh.csv", at=10)}
    outputs = {
        prediction_key("old.csv"): stored(prediction_key("old.csv"), at=5),
        error_key("fresh.csv"): stored(error_key("fresh.csv"), at=15),
    }
    assert plan(inputs, outputs) == [Action("fresh.csv", "rerun", "stale"), Action("old.csv", "rerun", "stale")]
    assert is_current(outputs[error_key("fresh.csv")], inputs["fresh.csv"])
    assert not is_current(outputs[prediction_key("old.csv")], inputs["old.csv"])


def test_an_error_report_left_behind_by_a_later_success_is_removed() -> None:
    inputs = {"fixed.csv": stored("fixed.csv", "good"), "both.csv": stored("both.csv", "x")}
    outputs = {
        prediction_key("fixed.csv"): stored(prediction_key("fixed.csv"), at=9, input_etag="good"),
        error_key("fixed.csv"): stored(error_key("fixed.csv"), at=3, input_etag="bad"),
        # Both written for this very input (the model changed in between): the newer one stands.
        prediction_key("both.csv"): stored(prediction_key("both.csv"), at=9, input_etag="x"),
        error_key("both.csv"): stored(error_key("both.csv"), at=3, input_etag="x"),
    }
    assert plan(inputs, outputs) == [
        Action("both.csv", "remove-error-report", "superseded"),
        Action("fixed.csv", "remove-error-report", "superseded"),
    ]


def test_predictions_of_an_earlier_upload_go_when_the_current_file_was_rejected() -> None:
    inputs = {"k.csv": stored("k.csv", "now-bad")}
    outputs = {
        prediction_key("k.csv"): stored(prediction_key("k.csv"), at=1, input_etag="was-good"),
        error_key("k.csv"): stored(error_key("k.csv"), at=2, input_etag="now-bad"),
    }
    assert plan(inputs, outputs) == [Action("k.csv", "remove-stale-predictions", "superseded")]


def test_nothing_to_do_when_every_input_has_its_one_output() -> None:
    inputs = {"a.csv": stored("a.csv", "1"), "b.csv": stored("b.csv", "2")}
    outputs = {
        prediction_key("a.csv"): stored(prediction_key("a.csv"), input_etag="1"),
        error_key("b.csv"): stored(error_key("b.csv"), input_etag="2"),
        prediction_key("gone.csv"): stored(prediction_key("gone.csv"), input_etag="3"),  # its input was deleted
    }
    assert plan(inputs, outputs) == []


# -- failure records ------------------------------------------------------------------------------------------


def message(body: object, sent_ms: int = 1764763200000) -> dict:
    return {
        "MessageId": "m-1",
        "ReceiptHandle": "r-1",
        "Body": body if isinstance(body, str) else json.dumps(body),
        "Attributes": {"SentTimestamp": str(sent_ms)},
    }


EVENT = s3_event("us-east-1", "lab-input", "folder/my file (1).csv", size=12, etag='"abc"')


def test_a_lambda_on_failure_record_as_aws_writes_it() -> None:
    """The shape AWS documents for an on-failure destination record (with its own timestamp)."""
    failure = failure_from_message(
        message(
            {
                "version": "1.0",
                "timestamp": "2026-12-03T09:10:11.123Z",
                "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": 3},
                "requestPayload": EVENT,
                "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
                "responsePayload": {"errorType": "ClientError", "errorMessage": "HeadObject: Not Found"},
            }
        )
    )
    assert failure.inputs == (("lab-input", "folder/my file (1).csv"),)
    assert failure.input_uris == ["s3://lab-input/folder/my file (1).csv"]
    assert failure.error == "ClientError: HeadObject: Not Found"
    assert failure.attempts == 3
    assert failure.when == datetime(2026, 12, 3, 9, 10, 11, 123000, tzinfo=UTC)
    assert failure.event == EVENT


def test_a_record_as_ministack_writes_it_a_throttle_and_a_stranger() -> None:
    """MiniStack's records carry no timestamp (the queue's SentTimestamp says when) and a throttle's error is
    Lambda's own; a message that is not a failure record is shown, not dropped."""
    throttled = failure_from_message(
        message(
            {
                "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": 3},
                "requestPayload": EVENT,
                "responsePayload": {"__type": "TooManyRequestsException", "message": "Rate Exceeded"},
            }
        )
    )
    assert throttled.error == "TooManyRequestsException: Rate Exceeded"
    assert throttled.when == datetime.fromtimestamp(1764763200, UTC)
    stranger = failure_from_message(message("hello"))
    assert stranger.inputs == () and stranger.event is None and "not a Lambda failure record" in stranger.error


def test_rerun_events_are_what_the_handler_reads(handler_module: ModuleType) -> None:
    """The event reconcile and redrive send names the same object as S3's own would, odd characters included."""
    key = "2026/12 batch+final (v2)%.csv"
    event = s3_event("us-east-1", "in", key, size=5, etag='"e"')
    assert event_inputs(event) == [("in", key)]
    (obj,) = handler_module.objects_created(event)
    assert (obj.bucket, obj.key, obj.size, obj.etag) == ("in", key, 5, "e")


# -- the embedded lab's state ---------------------------------------------------------------------------------


def test_the_emulator_persists_under_the_state_dir_and_is_bounded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(_env_file=None, state_dir=tmp_path, emulator_lambda_concurrency=7)
    env = emulator.service(settings).env
    dirs = emulator.state_dirs(settings)
    assert (env["PERSIST_STATE"], env["STATE_DIR"]) == ("1", str(dirs.services))
    assert (env["S3_PERSIST"], env["S3_DATA_DIR"]) == ("1", str(dirs.s3))
    assert env["LAMBDA_ACCOUNT_CONCURRENCY"] == "7"
    assert "PERSIST_STATE" not in emulator.service(settings.model_copy(update={"emulator_persist": False})).env


def test_reset_deletes_the_emulator_state_and_mlflow_together(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(_env_file=None, state_dir=tmp_path)
    dirs = emulator.state_dirs(settings)
    for folder, name in ((dirs.s3, "object"), (dirs.services, "iam.json"), (tmp_path / "mlflow", "mlflow.db")):
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"x" * 1000)
    (tmp_path / "models").mkdir()
    assert {data.path for data in services.stored_data(settings)} == {dirs.s3, dirs.services, tmp_path / "mlflow"}
    assert all(data.bytes == 1000 for data in services.stored_data(settings))

    external = settings.model_copy(update={"mlflow_backend_uri": "postgresql://db/mlflow"})
    with pytest.raises(services.ResetError, match="outside"):
        services.reset(external)
    assert dirs.s3.exists()  # refused before deleting anything

    stopped, deleted = services.reset(settings)
    assert stopped == [] and len(deleted) == 3
    assert not dirs.s3.exists() and not dirs.services.exists() and not (tmp_path / "mlflow").exists()
    assert (tmp_path / "models").exists()  # not the emulator's or mlflow's: kept
