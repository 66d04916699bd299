"""The batch_predict handler called directly, `handler(event, context)`, against the real emulator's S3."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import Lab


def s3_event(bucket: str, *keys: str, event_name: str = "ObjectCreated:Put") -> dict[str, Any]:
    return {
        "Records": [
            {"eventName": event_name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}} for key in keys
        ]
    }


# -- pure helpers ------------------------------------------------------------------------------------------------


def test_output_keys_are_derived_from_the_input_key(handler_module: ModuleType) -> None:
    assert handler_module.output_key("2026/batch 1.csv") == "predictions/2026/batch 1.csv"
    assert handler_module.error_key("a.csv") == "errors/a.csv.json"


def test_every_created_record_is_read_and_keys_are_url_decoded(handler_module: ModuleType) -> None:
    event = s3_event("in", "a.csv", "dir/my+file%281%29.csv")
    event["Records"].append(
        {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "in"}, "object": {"key": "x.csv"}}}
    )
    objects = handler_module.objects_created(event)
    assert [o.key for o in objects] == ["a.csv", "dir/my file(1).csv"]


def test_an_event_without_records_does_nothing(handler_module: ModuleType, lambda_context: Any) -> None:
    assert handler_module.handler({}, lambda_context) == {"results": []}


# -- against the emulator's S3 -----------------------------------------------------------------------------------


@pytest.fixture
def handler(handler_module: ModuleType, lab_stack: Lab, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    settings = lab_stack.settings
    monkeypatch.setattr(handler_module, "OUTPUT_BUCKET", settings.output_bucket)
    monkeypatch.setattr(handler_module, "MODEL_BUCKET", settings.model_bucket)
    monkeypatch.setattr(handler_module, "MODEL_KEY", settings.model_key)
    monkeypatch.setattr(handler_module, "_s3", lab_stack.s3())
    return handler_module


def test_handler_scores_every_record(
    handler: ModuleType, lab_stack: Lab, sample_csv: Path, lambda_context: Any
) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    # Inputs go to a bucket no notification watches, so the deployed function does not race this direct call.
    bucket = settings.model_bucket
    keys = ["direct/one.csv", "direct/two.csv"]
    for key in keys:
        s3.upload_file(str(sample_csv), bucket, key)
    result = handler.handler(s3_event(bucket, *keys), lambda_context)
    assert [r["status"] for r in result["results"]] == ["ok", "ok"]
    for key in keys:
        body = s3.get_object(Bucket=settings.output_bucket, Key=f"predictions/{key}")["Body"].read().decode()
        assert len(body.splitlines()) == 501
        assert body.splitlines()[0].endswith(",prediction,probability_<=50K,probability_>50K")


def test_bad_file_does_not_stop_the_good_one(
    handler: ModuleType, lab_stack: Lab, sample_csv: Path, lambda_context: Any
) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    bucket = settings.model_bucket
    s3.put_object(Bucket=bucket, Key="direct/bad.csv", Body=b"age\n1\n")
    s3.upload_file(str(sample_csv), bucket, "direct/good.csv")
    result = handler.handler(s3_event(bucket, "direct/bad.csv", "direct/good.csv"), lambda_context)
    assert [r["status"] for r in result["results"]] == ["rejected", "ok"]
    report = json.loads(s3.get_object(Bucket=settings.output_bucket, Key="errors/direct/bad.csv.json")["Body"].read())
    assert report["input"] == f"s3://{bucket}/direct/bad.csv"
    assert report["reason"].startswith("missing columns")


def test_model_is_cached_until_its_etag_changes(
    handler: ModuleType,
    lab_stack: Lab,
    sample_csv: Path,
    lambda_context: Any,
    trained_model_path: Path,
    course_model_path: Path,
) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    bucket = settings.model_bucket
    s3.upload_file(str(sample_csv), bucket, "direct/cache.csv")
    handler.handler(s3_event(bucket, "direct/cache.csv"), lambda_context)
    first = handler._models.model
    handler.handler(s3_event(bucket, "direct/cache.csv"), lambda_context)
    assert handler._models.model is first  # warm: same object, not reloaded
    try:
        s3.upload_file(str(course_model_path), bucket, settings.model_key)
        handler.handler(s3_event(bucket, "direct/cache.csv"), lambda_context)
        assert handler._models.model is not first
        assert handler._models.model.metadata.get("classes") is None  # the course model carries no lab metadata
    finally:
        s3.upload_file(str(trained_model_path), bucket, settings.model_key)
