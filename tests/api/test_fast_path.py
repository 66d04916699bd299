"""The /predict fast paths give exactly what the general paths give: the core's ``predict_small`` against
``predict_records``, and the ASGI ``PredictFastPath`` against the FastAPI route (which answers whatever it declines)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from mlops_lab.api import access_log
from mlops_lab.api.app import create_app
from mlops_lab.api.predict import PredictFastPath
from mlops_lab.inference import SMALL_BATCH, InputError, TabularModel
from tests.model_zoo import make_rows, tensor_classifier


def rows_as_records(n: int, seed: int) -> list[dict]:
    columns = make_rows(n, seed)
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def outcome(model: TabularModel, method: str, records: list[dict]):
    try:
        result = getattr(model, method)(records)
        return result.records() if method == "predict_records" else result
    except InputError as exc:
        return ("InputError", exc.to_dict())


def same(a, b) -> bool:
    """Equal outcomes; json.dumps so that NaN probabilities (a null for a model with no imputer) compare equal."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# -- the core: predict_small ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, SMALL_BATCH, SMALL_BATCH + 1])
def test_predict_small_equals_predict_records(small_model, n):
    model = TabularModel(small_model)
    model.classes  # noqa: B018 - learned before the fast path is used, as the API's warm-up does
    for seed in range(3):
        records = rows_as_records(n, seed)
        assert model.predict_small(records) == model.predict_records(records).records()


@pytest.mark.parametrize(
    "change",
    [
        {"age": "45"},  # a numeric string: the casters refuse it, the general path takes it
        {"age": 45.0},
        {"age": True},
        {"age": 45.5},
        {"age": None},
        {"age": 2**70},
        {"score": None},  # NaN for the imputer, in the general path
        {"score": "0.5"},
        {"score": 10},
        {"score": float("inf")},
        {"sex": "Other"},
        {"sex": 1},
        {"unexpected": 1},
    ],
)
def test_predict_small_odd_values_match_the_general_path(small_model, record, change):
    model = TabularModel(small_model)
    model.classes  # noqa: B018
    for records in ([record | change], [record, record | change]):
        assert same(outcome(model, "predict_small", records), outcome(model, "predict_records", records))


def test_predict_small_missing_column_and_no_records(small_model, record):
    model = TabularModel(small_model)
    del record["age"]
    assert outcome(model, "predict_small", [record]) == outcome(model, "predict_records", [record])
    assert outcome(model, "predict_small", []) == outcome(model, "predict_records", [])


@pytest.mark.parametrize("zipmap", [False, True])
def test_predict_small_single_tensor_models(tmp_path, zipmap):
    model = TabularModel(tensor_classifier(tmp_path / "tensor.onnx", zipmap=zipmap))
    records = [{"f0": 0.5, "f1": -1, "f2": 2.0}, {"f0": -0.5, "f1": 1.5, "f2": 0}]
    # the first call learns the class names (general path), the next ones use the fast path
    for _ in range(2):
        assert model.predict_small(records[:1]) == model.predict_records(records[:1]).records()
        assert model.predict_small(records) == model.predict_records(records).records()
    assert same(
        outcome(model, "predict_small", [{"f0": "x", "f1": 0, "f2": 0}]),
        outcome(model, "predict_records", [{"f0": "x", "f1": 0, "f2": 0}]),
    )


@pytest.mark.parametrize("n", [1, 2, SMALL_BATCH, SMALL_BATCH + 1])
def test_predict_small_equals_predict_records_for_every_kind(case, n):
    """A regressor's values, a multi-class model's probabilities (tensor or ZipMap), labels alone: the same rows."""
    model = TabularModel(case.path)
    model.classes  # noqa: B018
    for start in (0, 1):
        records = case.records[start : start + n]
        assert same(model.predict_small(records), model.predict_records(records).records())
    odd = case.records[0] | {case.features[0]: "1.5"}  # the general path casts the string
    assert same(outcome(model, "predict_small", [odd]), outcome(model, "predict_records", [odd]))


def test_predict_small_from_many_threads(small_model):
    """The one-row tensors are reused under a lock; concurrent callers must still each get their own row's answer."""
    model = TabularModel(small_model)
    records = rows_as_records(64, 7)
    expected = [model.predict_records([r]).records()[0] for r in records]
    failures: list[str] = []

    def work(offset: int) -> None:
        for i in range(300):
            k = (i + offset) % len(records)
            if model.predict_small([records[k]])[0] != expected[k]:
                failures.append(f"row {k}")

    threads = [threading.Thread(target=work, args=(t * 13,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


# -- the API: PredictFastPath against the route -----------------------------------------------------------------------


class WhoAnswered:
    """Test-only outermost ASGI layer: for each HTTP request, records whether FastAPI's router saw it (Starlette's
    router puts itself in the scope as ``scope["router"]``) or the fast path answered in front of it."""

    def __init__(self, app, *, answered: list[str]) -> None:
        self.app = app
        self.answered = answered

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            self.answered.append("route" if "router" in scope else "fast path")


@dataclass
class Observed:
    client: TestClient
    answered: list[str]  # one entry per request, in order: "fast path" or "route"


@pytest.fixture
def observed(settings_factory, small_model):
    """``observed(**settings)`` → a started client of an app that records which layer answered each request."""
    clients = []

    def make(source=None, **overrides) -> Observed:
        app = create_app(settings_factory(**overrides), model_source=source or small_model)
        answered: list[str] = []
        app.add_middleware(WhoAnswered, answered=answered)
        client = TestClient(app, base_url="http://127.0.0.1")  # the guard serves loopback names, not `testserver`
        client.__enter__()
        clients.append(client)
        return Observed(client, answered)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def both_ways(observed: Observed, body: bytes, headers: dict | None = None):
    """The same request sent with a Content-Length (the fast path may answer it) and chunked (the fast path declines:
    the route answers). Returns both responses and which layer answered the first."""
    headers = {"content-type": "application/json"} | (headers or {})
    fast = observed.client.post("/predict", content=body, headers=headers)
    routed = observed.client.post("/predict", content=iter([body]), headers=headers)
    *_, fast_by, routed_by = observed.answered
    assert routed_by == "route"
    return fast, routed, fast_by


def expected_layer(status: int) -> str:
    """The fast path answers every successful prediction it is sent with a Content-Length, and nothing else."""
    return "fast path" if status == 200 else "route"


BODIES = [
    (b'{"age": 45, "hours_per_week": 50, "score": 0.5, "work_class": "Private", "sex": "Male"}', 200),
    (
        b'[{"age": 45, "hours_per_week": 50, "score": 0.5, "work_class": "Private", "sex": "Male"},'
        b' {"age": 20.0, "hours_per_week": 10, "score": -1, "work_class": "Gov", "sex": "Female"}]',
        200,
    ),
    (b'{"age": "45", "hours_per_week": 50, "score": 0.5, "work_class": "Private", "sex": "Male"}', 422),
    (b'{"age": 45, "hours_per_week": 50, "score": 0.5, "work_class": "Private", "sex": "Other"}', 422),
    (b'{"age": 45, "hours_per_week": 50, "score": 0.5, "work_class": "Private"}', 422),
    (b'{"age": 45, "hours_per_week": 50, "score": 0.5, "work_class": "Private", "sex": "Male", "x": 1}', 422),
    (b"", 422),
    (b"{", 422),
    (b"[]", 422),
    (b"null", 422),
    (b"[1]", 422),
]


@pytest.mark.parametrize(("body", "status"), BODIES)
def test_fast_path_answers_like_the_route(observed, body, status):
    fast, routed, fast_by = both_ways(observed(), body)
    assert fast.status_code == routed.status_code == status
    assert fast_by == expected_layer(status)
    assert fast.json() == routed.json()
    assert fast.headers["content-type"] == routed.headers["content-type"]
    assert fast.headers["content-length"] == routed.headers["content-length"]


def test_fast_path_answers_like_the_route_for_every_kind(observed, case):
    """Byte for byte, for a regressor, multi-class models on one 2-D tensor (probabilities as a tensor, as a ZipMap)
    and a label-only classifier: successes from the fast path, every error from the route."""
    client = observed(source=case.path)
    good = case.records
    first, last = case.features[0], case.features[-1]
    for body, status in [
        (good[0], 200),
        (good[:2], 200),
        (good[: SMALL_BATCH + 1], 200),  # the general scoring path
        (good[0] | {first: 1}, 200),  # an int for a float column
        (good[0] | {first: "1.5"}, 422),
        (good[0] | {first: None}, 422),
        (good[0] | {first: True}, 422),
        ({k: v for k, v in good[0].items() if k != last}, 422),
        (good[0] | {"target": 1.0}, 422),
        ([good[0], good[1] | {first: "x"}], 422),
    ]:
        fast, routed, fast_by = both_ways(client, json.dumps(body).encode())
        assert fast.status_code == routed.status_code == status, body
        assert fast_by == expected_layer(status), body
        assert fast.content == routed.content, body
        assert fast.headers["content-length"] == routed.headers["content-length"]
        if status == 200:
            rows = fast.json()["predictions"]
            assert len(rows) == (len(body) if isinstance(body, list) else 1)
            assert set(rows[0]) == ({"prediction"} if case.kind == "regressor" else set(case.onnxruntime_rows()[0]))


def test_fast_path_many_rows_and_limits(observed, record):
    client = observed(api_max_rows=40, api_max_body_bytes=4000)
    for rows, status in ((SMALL_BATCH + 1, 200), (30, 200), (41, 413)):
        fast, routed, fast_by = both_ways(client, json.dumps([record] * rows).encode())
        assert fast.status_code == routed.status_code == status, rows
        assert fast_by == expected_layer(status), rows
        assert fast.json() == routed.json()
        if status == 200:
            assert len(fast.json()["predictions"]) == rows
    too_big = json.dumps([record] * 60).encode()
    assert len(too_big) > 4000
    fast, routed, fast_by = both_ways(client, too_big)
    assert fast.status_code == routed.status_code == 413
    assert fast_by == "route"


def test_fast_path_checks_the_api_key_like_the_route(observed, record):
    client = observed(api_key="sekrit")
    body = json.dumps(record).encode()
    for headers, status in [
        ({}, 401),
        ({"x-api-key": "wrong"}, 401),
        ({"x-api-key": ""}, 401),
        ({"x-api-key": "sekrit"}, 200),
        ({"authorization": "Bearer sekrit"}, 200),
        ({"authorization": "bearer sekrit"}, 200),
        ({"authorization": "Basic sekrit"}, 401),
        ({"authorization": "Bearer wrong"}, 401),
        ({"x-api-key": "wrong", "authorization": "Bearer sekrit"}, 401),  # X-API-Key wins, as in the route
    ]:
        fast, routed, fast_by = both_ways(client, body, headers)
        assert fast.status_code == routed.status_code == status, headers
        assert fast_by == expected_layer(status), headers
        assert fast.json() == routed.json()


def test_fast_path_steps_aside_for_other_requests_and_for_telemetry():
    seen: list[str] = []

    async def route(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    class NoStore:
        current = None

    fast = PredictFastPath(route, store=NoStore(), max_body_bytes=100, api_key=None)  # type: ignore[arg-type]
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    base = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "root_path": "",
        "headers": [(b"content-length", b"2")],
    }
    for scope in (
        base | {"path": "/invocations"},
        base | {"method": "GET"},
        base | {"fastapi.telemetry": object()},
        base,  # no model loaded: the route answers 503
    ):
        asyncio.run(fast(scope, receive, send))
    assert seen == ["/invocations", "/predict", "/predict", "/predict"]


def test_fast_path_requests_are_access_logged(settings_factory, small_model, record, monkeypatch):
    """One JSON line per request, rows and model version included, through the direct write and through logging."""
    logger = logging.getLogger("mlops_lab.api.access")
    stream = io.StringIO()
    monkeypatch.setattr(logger, "handlers", [access_log.JsonLinesHandler(stream)])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    app = create_app(settings_factory(api_access_log=True), model_source=small_model)
    answered: list[str] = []
    app.add_middleware(WhoAnswered, answered=answered)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.post("/predict", json=record).status_code == 200
        assert client.post("/predict", json=record | {"sex": "Other"}).status_code == 422
        # another handler as well: the middleware goes through logger.info, and the lines are the same
        captured: list[str] = []
        extra = logging.Handler()
        extra.emit = lambda rec: captured.append(rec.getMessage())  # type: ignore[method-assign]
        logger.handlers.append(extra)
        assert client.post("/predict", json=[record, record]).status_code == 200
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["path"], e["status"], e.get("rows")) for e in lines] == [
        ("/predict", 200, 1),
        ("/predict", 422, None),
        ("/predict", 200, 2),
    ]
    assert lines[0]["model_version"] == "1" and {"ts", "method", "ms", "bytes", "client"} <= set(lines[0])
    assert [json.loads(line) for line in captured] == lines[2:]
    # the 200s were the fast path's (the route would write the same lines): its requests are the ones logged here
    assert answered == ["fast path", "route", "fast path"]


def test_a_null_is_refused_by_both_paths(observed, record):
    """The core would score a null as NaN (and a model with no imputer would answer NaN): the API refuses it first."""
    fast, routed, fast_by = both_ways(observed(), json.dumps(record | {"score": None}).encode())
    assert fast.status_code == routed.status_code == 422
    assert fast_by == "route"
    assert fast.json() == routed.json()
    (error,) = fast.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", "score"], "float_type")
