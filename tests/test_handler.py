"""The batch_predict handler called directly, `handler(event, context)`, against the real emulator's S3."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mlops_lab.contract import error_key, prediction_key
from tests.support import Lab


def s3_event(bucket: str, *keys: str, event_name: str = "ObjectCreated:Put") -> dict[str, Any]:
    return {
        "Records": [
            {"eventName": event_name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}} for key in keys
        ]
    }


# -- pure helpers ------------------------------------------------------------------------------------------------


def test_output_keys_are_derived_from_the_input_key() -> None:
    assert prediction_key("2026/batch 1.csv") == "predictions/2026/batch 1.csv"
    assert error_key("a.csv") == "errors/a.csv.json"


def test_configuration_comes_from_the_environment_bootstrap_sets(handler_module: ModuleType) -> None:
    config = handler_module.Config.from_env(
        {"OUTPUT_BUCKET": "out", "MODEL_BUCKET": "m", "MODEL_KEY": "k.onnx", "MAX_INPUT_BYTES": "7", "CHUNK_ROWS": "3"}
    )
    assert config == handler_module.Config("out", "m", "k.onnx", max_input_bytes=7, chunk_rows=3)


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


class Handler:
    """The handler's ``handle`` with the stack's configuration, its S3 client and a model cache of its own."""

    def __init__(self, module: ModuleType, lab_stack: Lab) -> None:
        settings = lab_stack.settings
        self.config = module.Config(settings.output_bucket, settings.model_bucket, settings.model_key)
        self.models = module.ModelCache()
        self._module, self._s3 = module, lab_stack.s3()

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        return self._module.handle(event, self.config, self._s3, self.models)


@pytest.fixture
def handler(handler_module: ModuleType, lab_stack: Lab) -> Handler:
    return Handler(handler_module, lab_stack)


def test_handler_scores_every_record(handler: Handler, lab_stack: Lab, sample_csv: Path) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    # Inputs go to a bucket no notification watches, so the deployed function does not race this direct call.
    bucket = settings.model_bucket
    keys = ["direct/one.csv", "direct/two.csv"]
    for key in keys:
        s3.upload_file(str(sample_csv), bucket, key)
    result = handler(s3_event(bucket, *keys))
    assert [r["status"] for r in result["results"]] == ["ok", "ok"]
    for key in keys:
        body = s3.get_object(Bucket=settings.output_bucket, Key=prediction_key(key))["Body"].read().decode()
        assert len(body.splitlines()) == 501
        assert body.splitlines()[0].endswith(",prediction,probability_<=50K,probability_>50K")


def test_bad_file_does_not_stop_the_good_one(handler: Handler, lab_stack: Lab, sample_csv: Path) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    bucket = settings.model_bucket
    s3.put_object(Bucket=bucket, Key="direct/bad.csv", Body=b"age\n1\n")
    s3.upload_file(str(sample_csv), bucket, "direct/good.csv")
    result = handler(s3_event(bucket, "direct/bad.csv", "direct/good.csv"))
    assert [r["status"] for r in result["results"]] == ["rejected", "ok"]
    report = json.loads(s3.get_object(Bucket=settings.output_bucket, Key=error_key("direct/bad.csv"))["Body"].read())
    assert report["input"] == f"s3://{bucket}/direct/bad.csv"
    assert report["reason"].startswith("missing columns")


def test_model_is_cached_until_its_etag_changes(
    handler: Handler,
    lab_stack: Lab,
    sample_csv: Path,
    trained_model_path: Path,
    course_model_path: Path,
) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    bucket = settings.model_bucket
    s3.upload_file(str(sample_csv), bucket, "direct/cache.csv")
    handler(s3_event(bucket, "direct/cache.csv"))
    first = handler.models.model
    handler(s3_event(bucket, "direct/cache.csv"))
    assert handler.models.model is first  # warm: same object, not reloaded
    try:
        s3.upload_file(str(course_model_path), bucket, settings.model_key)
        handler(s3_event(bucket, "direct/cache.csv"))
        assert handler.models.model is not first
        assert handler.models.model.metadata.get("classes") is None  # the course model carries no lab metadata
    finally:
        s3.upload_file(str(trained_model_path), bucket, settings.model_key)
