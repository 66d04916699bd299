"""The batch_predict handler called directly, `handler(event, context)`, against the real emulator's S3."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mlops_lab.contract import META_INPUT_ETAG, META_MODEL_ETAG, META_ROWS, error_key, prediction_key
from mlops_lab.inference import TabularModel, score_csv
from tests import model_zoo
from tests.support import Lab, restoring_live_model


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


def local_scoring(model_path: Path, csv_path: Path) -> str:
    """What the handler must write for ``csv_path``: the core's own output for it, run here."""
    sink = io.StringIO()
    with csv_path.open(newline="") as source:
        score_csv(TabularModel(model_path), source, sink)
    return sink.getvalue()


def test_handler_scores_every_record(
    handler: Handler, lab_stack: Lab, sample_csv: Path, trained_model_path: Path
) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    # Inputs go to a bucket no notification watches, so the deployed function does not race this direct call.
    bucket = settings.model_bucket
    keys = ["direct/one.csv", "direct/two.csv"]
    for key in keys:
        s3.upload_file(str(sample_csv), bucket, key)
    result = handler(s3_event(bucket, *keys))
    assert [r["status"] for r in result["results"]] == ["ok", "ok"]
    expected = local_scoring(trained_model_path, sample_csv)
    for key in keys:
        answer = s3.get_object(Bucket=settings.output_bucket, Key=prediction_key(key))
        assert answer["Body"].read().decode() == expected
        assert answer["Metadata"][META_ROWS] == "500"
        # The input it was written for: `reconcile` tells it from an output of an earlier upload under this key.
        assert answer["Metadata"][META_INPUT_ETAG] == s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def test_bad_file_does_not_stop_the_good_one(handler: Handler, lab_stack: Lab, sample_csv: Path) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    bucket = settings.model_bucket
    bad_etag = s3.put_object(Bucket=bucket, Key="direct/bad.csv", Body=b"age\n1\n")["ETag"]
    s3.upload_file(str(sample_csv), bucket, "direct/good.csv")
    result = handler(s3_event(bucket, "direct/bad.csv", "direct/good.csv"))
    assert [r["status"] for r in result["results"]] == ["rejected", "ok"]
    stored = s3.get_object(Bucket=settings.output_bucket, Key=error_key("direct/bad.csv"))
    assert stored["Metadata"][META_INPUT_ETAG] == bad_etag.strip('"')
    report = json.loads(stored["Body"].read())
    assert report["input"] == f"s3://{bucket}/direct/bad.csv"
    assert report["reason"].startswith("missing columns: work_class")
    assert s3.head_object(Bucket=settings.output_bucket, Key=prediction_key("direct/good.csv"))


@pytest.fixture(scope="module")
def other_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second lab model (other data, other seed): what a new publication replaces the session's model with."""
    return model_zoo.lab_classifier(tmp_path_factory.mktemp("other-model") / "model.onnx", rows=2000, seed=8)


@pytest.fixture(params=["own", "course"])
def replacement_model(request: pytest.FixtureRequest, other_model_path: Path) -> Path:
    """The model published in place of the session's: another lab model (always), the course's (with ../shared)."""
    if request.param == "course":
        return request.getfixturevalue("course_model_path")
    return other_model_path


def test_model_is_cached_until_its_etag_changes(
    handler: Handler, lab_stack: Lab, sample_csv: Path, replacement_model: Path
) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    bucket = settings.model_bucket
    s3.upload_file(str(sample_csv), bucket, "direct/cache.csv")
    output = {"Bucket": settings.output_bucket, "Key": prediction_key("direct/cache.csv")}
    handler(s3_event(bucket, "direct/cache.csv"))
    first, first_etag = handler.models.model, handler.models.etag
    assert first is not None and first_etag
    handler(s3_event(bucket, "direct/cache.csv"))
    assert handler.models.model is first  # warm: same object, not reloaded
    assert s3.head_object(**output)["Metadata"][META_MODEL_ETAG] == first_etag.strip('"')
    with restoring_live_model(lab_stack):
        s3.upload_file(str(replacement_model), bucket, settings.model_key)
        handler(s3_event(bucket, "direct/cache.csv"))
        assert handler.models.model is not first
        assert handler.models.etag != first_etag
        assert handler.models.model.metadata == TabularModel(replacement_model).metadata  # the new one, loaded
        answer = s3.get_object(**output)
        assert answer["Metadata"][META_MODEL_ETAG] == handler.models.etag.strip('"')
        assert answer["Body"].read().decode() == local_scoring(replacement_model, sample_csv)
