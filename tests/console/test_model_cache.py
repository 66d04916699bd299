"""The lab's one model cache (``mlops_lab.model_cache``) and both of its users: the console's live-model schema and
the API's model store. Neither reloads a model whose fingerprint (S3 ETag) did not change."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mlops_lab.api.model_store import Artifact, ModelStore
from mlops_lab.console import views
from mlops_lab.model_cache import ModelCache
from mlops_lab.settings import Settings


def _never() -> str:
    raise AssertionError("loaded although the fingerprint did not change")


def test_loads_only_when_the_fingerprint_changes() -> None:
    cache: ModelCache[str] = ModelCache()
    assert cache.get("etag-1", lambda: "model 1") == "model 1"
    assert cache.get("etag-1", _never) == "model 1"
    assert cache.get("etag-2", lambda: "model 2") == "model 2"
    assert cache.get("etag-1", lambda: "model 1 again") == "model 1 again"  # one value: going back is a change too


def test_a_failing_load_keeps_the_cached_value_and_is_tried_again() -> None:
    cache: ModelCache[str] = ModelCache()
    cache.get("etag-1", lambda: "model 1")

    def broken() -> str:
        raise ValueError("not an ONNX model")

    with pytest.raises(ValueError):
        cache.get("etag-2", broken)
    assert cache.get("etag-1", _never) == "model 1"
    assert cache.get("etag-2", lambda: "model 2") == "model 2"


def test_concurrent_callers_wait_for_one_load() -> None:
    cache: ModelCache[object] = ModelCache()
    loads: list[object] = []

    def slow_load() -> object:
        time.sleep(0.2)
        loads.append(object())
        return loads[-1]

    results: list[object] = []
    start = threading.Barrier(8)

    def caller() -> None:
        start.wait()
        results.append(cache.get("etag-1", slow_load))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(loads) == 1
    assert results == loads * 8


class _ModelBucket:
    """The S3 client calls the console makes on the model object, counted."""

    def __init__(self, model: bytes) -> None:
        self.model, self.etag = model, '"etag-1"'
        self.heads = self.gets = 0

    def client(self, service: str) -> Any:  # as Aws.client
        assert service == "s3"
        return self

    def head_object(self, **_: Any) -> dict[str, Any]:
        self.heads += 1
        return {"ETag": self.etag}

    def get_object(self, *, IfMatch: str, **_: Any) -> dict[str, Any]:
        assert IfMatch == self.etag
        self.gets += 1
        return {"Body": _Body(self.model)}


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


def test_the_console_reads_the_live_model_once_per_etag(trained_model_path: Path) -> None:
    bucket = _ModelBucket(trained_model_path.read_bytes())
    cache: ModelCache[views.ModelSchema] = ModelCache()
    first = views.model_schema(Settings(), bucket, cache)  # type: ignore[arg-type]
    again = views.model_schema(Settings(), bucket, cache)  # type: ignore[arg-type]
    assert again is first and (bucket.heads, bucket.gets) == (2, 1)
    assert first.kind == "classifier" and first.classes == ["<=50K", ">50K"]
    assert dict(first.inputs)["work_class"] == "text"
    bucket.etag = '"etag-2"'  # published again
    views.model_schema(Settings(), bucket, cache)  # type: ignore[arg-type]
    assert (bucket.heads, bucket.gets) == (3, 2)


class _Source:
    """A model source whose fingerprint the test sets, counting fetches."""

    uri = "test:model"

    def __init__(self, model: bytes) -> None:
        self.model, self.etag = model, "etag-1"
        self.fetches = 0

    def fingerprint(self) -> str:
        return self.etag

    def fetch(self) -> Artifact:
        self.fetches += 1
        return Artifact(self.model, self.etag, version="1")


def test_the_api_fetches_the_model_only_when_its_fingerprint_changes(trained_model_path: Path) -> None:
    source = _Source(trained_model_path.read_bytes())
    store = ModelStore(source, name="income-classifier", max_rows=10, poll_s=0)
    assert store.check() is True
    served = store.current
    assert store.check() is False and store.current is served and source.fetches == 1
    source.etag = "etag-2"
    assert store.check() is True and store.current is not served and source.fetches == 2
    served = store.current
    source.etag, source.model = "etag-3", b"not an onnx model"
    assert store.check() is False and store.last_error and store.current is served  # the old model stays in service
    assert store.check() is False and source.fetches == 4  # a broken model is fetched again on the next poll
    assert store.swaps == 2
