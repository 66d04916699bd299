"""TestClient unit tests: schema-derived validation, limits, auth, readiness, SageMaker invocations, hot swap."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil

import httpx
import pytest

from mlops_lab.api.app import create_app
from mlops_lab.inference import TabularModel, score_csv_text


def predict(client, body, **kwargs):
    return client.post("/predict", json=body, **kwargs)


# -- ops endpoints ------------------------------------------------------------------------------------------------


def test_health_ready_ping_metadata(make_client, small_model):
    client = make_client()
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["model"] == {"name": "income-classifier", "version": "1"}
    assert client.get("/ping").status_code == 200
    meta = client.get("/metadata").json()
    assert meta["version"] == "1"
    assert meta["source"] == str(small_model.resolve())
    assert meta["classes"] == ["<=50K", ">50K"]
    inputs = {item["name"]: item for item in meta["inputs"]}
    assert inputs["age"]["type"] == "integer"
    assert inputs["score"]["type"] == "number"
    assert inputs["sex"] == {"name": "sex", "type": "string", "categories": ["Female", "Male"]}
    assert len(meta["sha256"]) == 64


# -- /predict -----------------------------------------------------------------------------------------------------


def test_predict_one_record(make_client, record):
    response = predict(make_client(), record)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "income-classifier", "version": "1"}
    (row,) = body["predictions"]
    assert row["label"] in row["probabilities"]
    assert set(row["probabilities"]) == {"<=50K", ">50K"}
    assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_predict_list_matches_core(make_client, record, small_model):
    records = [record, record | {"age": 20, "sex": "Female", "hours_per_week": 10, "score": -1.0}]
    response = predict(make_client(), records)
    assert response.status_code == 200
    expected = TabularModel(small_model).predict_records(records).records()
    got = response.json()["predictions"]
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


def test_integral_floats_are_integers(make_client, record):
    assert predict(make_client(), record | {"age": 45.0}).status_code == 200


@pytest.mark.parametrize(
    ("change", "field", "error_type"),
    [
        ({"age": "45"}, "age", "int_type"),
        ({"age": 45.5}, "age", "int_from_float"),
        ({"age": True}, "age", "int_type"),
        ({"age": 2**60}, "age", "less_than_equal"),
        ({"score": "high"}, "score", "float_type"),
        ({"score": 1e39}, "score", "less_than_equal"),
        ({"sex": 1}, "sex", "literal_error"),
        ({"sex": "Other"}, "sex", "literal_error"),
        ({"work_class": None}, "work_class", "literal_error"),
        ({"unexpected": 1}, "unexpected", "extra_forbidden"),
    ],
)
def test_wrong_values_are_422_naming_the_field(make_client, record, change, field, error_type):
    response = predict(make_client(), record | change)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert error["type"] == error_type


def test_missing_field_is_422_naming_it(make_client, record):
    del record["hours_per_week"]
    response = predict(make_client(), [record, record])
    assert response.status_code == 422
    locs = [e["loc"] for e in response.json()["detail"]]
    assert locs == [["body", 0, "hours_per_week"], ["body", 1, "hours_per_week"]]
    assert response.json()["detail"][0]["msg"] == "Field required"


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"42", b'"x"', b"null", b"[1]"])
def test_malformed_bodies_are_422(make_client, body):
    response = make_client().post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


# -- limits -------------------------------------------------------------------------------------------------------


def test_too_many_rows_is_413(make_client, record):
    client = make_client(api_max_rows=5)
    assert predict(client, [record] * 5).status_code == 200
    response = predict(client, [record] * 6)
    assert response.status_code == 413
    assert "LAB_API_MAX_ROWS" in response.json()["detail"]


def test_body_too_large_is_413(make_client, record):
    client = make_client(api_max_body_bytes=2000)
    assert predict(client, [record] * 10).status_code == 200
    response = predict(client, [record] * 40)
    assert response.status_code == 413
    assert "LAB_API_MAX_BODY_BYTES" in response.json()["detail"]


def test_streamed_body_too_large_is_413(make_client):
    client = make_client(api_max_body_bytes=1000)

    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(20):
            yield b" " * 100

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_csv_rows_limit_is_413(make_client, record):
    client = make_client(api_max_rows=3)
    header = ",".join(record)
    line = ",".join(str(v) for v in record.values())
    ok = client.post("/invocations", content="\n".join([header] + [line] * 3), headers={"content-type": "text/csv"})
    assert ok.status_code == 200
    big = client.post("/invocations", content="\n".join([header] + [line] * 4), headers={"content-type": "text/csv"})
    assert big.status_code == 413


# -- API key ------------------------------------------------------------------------------------------------------


def test_api_key(make_client, record):
    client = make_client(api_key="sekrit")
    for path in ("/health", "/ready", "/ping"):
        assert client.get(path).status_code == 200
    response = predict(client, record)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert predict(client, record, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/metadata").status_code == 401
    assert client.post("/invocations", json=[record]).status_code == 401
    assert predict(client, record, headers={"X-API-Key": "sekrit"}).status_code == 200
    assert predict(client, record, headers={"Authorization": "Bearer sekrit"}).status_code == 200
    assert client.get("/metadata", headers={"X-API-Key": "sekrit"}).status_code == 200


def test_auth_is_checked_before_the_body(make_client):
    client = make_client(api_key="sekrit", api_max_body_bytes=10)
    assert client.post("/predict", content=b"x" * 100).status_code == 401


# -- readiness ----------------------------------------------------------------------------------------------------


def test_not_ready_until_the_model_appears(make_client, tmp_path, small_model, record):
    target = tmp_path / "later.onnx"
    client = make_client(source=target, api_model_poll_s=0.1)
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "loading"
    assert "FileNotFoundError" in ready.json()["error"]
    assert client.get("/ping").status_code == 503
    assert predict(client, record).status_code == 503
    assert client.get("/metadata").status_code == 503
    assert client.post("/invocations", json=[record]).status_code == 503
    assert client.get("/health").status_code == 200
    shutil.copyfile(small_model, target)
    for _ in range(100):  # the poller retries with backoff (0.5 s, 1 s, ...)
        if client.get("/ready").status_code == 200:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert client.get("/ready").status_code == 200
    assert predict(client, record).status_code == 200


def test_broken_model_keeps_the_old_one(make_client, model_file, record):
    client = make_client(source=model_file)
    store = client.app.state.store
    model_file.write_bytes(b"not an onnx model")
    assert store.check() is False
    assert store.last_error.startswith("InvalidProtobuf: "), store.last_error  # ORT's error for what it cannot parse
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["error"] == store.last_error
    assert ready.json()["model"] == {"name": "income-classifier", "version": "1"}
    response = predict(client, record)
    assert response.status_code == 200
    assert response.json()["model"]["version"] == "1"


def test_unreachable_s3_is_503_not_500(make_client, monkeypatch, record):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = make_client(source="s3")
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["source"] == "s3://mlops-lab-model/models/income-classifier/model.onnx"
    assert predict(client, record).status_code == 503


# -- SageMaker contract ---------------------------------------------------------------------------------------------


def _csv(records, header=True):
    sink = io.StringIO()
    writer = csv.writer(sink, lineterminator="\n")
    if header:
        writer.writerow(records[0])
    writer.writerows([r.values() for r in records])
    return sink.getvalue()


def test_invocations_csv_with_and_without_header(make_client, record):
    client = make_client()
    records = [record, record | {"sex": "Female", "age": 19}]
    with_header = client.post("/invocations", content=_csv(records), headers={"content-type": "text/csv"})
    without = client.post("/invocations", content=_csv(records, header=False), headers={"content-type": "text/csv"})
    assert with_header.status_code == without.status_code == 200
    assert with_header.json() == without.json()
    assert len(with_header.json()["predictions"]) == 2
    as_csv = client.post(
        "/invocations", content=_csv(records), headers={"content-type": "text/csv", "accept": "text/csv"}
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    lines = as_csv.text.splitlines()
    assert len(lines) == 2  # one per record, no header: the columns are prediction, probability_<=50K, _>50K
    for line, row in zip(lines, with_header.json()["predictions"], strict=True):
        assert line == ",".join([row["label"], *(f"{p:.6f}" for p in row["probabilities"].values())])


def test_invocations_csv_errors_name_row_and_column(make_client, record):
    client = make_client()
    records = [record, record | {"age": "old"}]
    for header, row in ((True, 3), (False, 2)):
        response = client.post("/invocations", content=_csv(records, header), headers={"content-type": "text/csv"})
        assert response.status_code == 422
        body = response.json()
        assert body["columns"] == ["age"]
        assert body["rows"] == [{"row": row, "column": "age", "value": "old"}]
    for bad in (b"", b"age,sex\n1,Male\n", b"\xff\xfe\x00", b"a,b\n"):
        assert client.post("/invocations", content=bad, headers={"content-type": "text/csv"}).status_code == 422


def test_invocations_json_shapes(make_client, record):
    client = make_client()
    records = [record, record | {"age": 19}]
    expected = client.post("/predict", json=records).json()
    split = {"columns": list(record), "data": [list(r.values()) for r in records]}
    for body in (records, {"instances": records}, {"dataframe_records": records}, {"dataframe_split": split}):
        response = client.post("/invocations", json=body)
        assert response.status_code == 200, (body, response.text)
        assert response.json() == expected
    single = client.post("/invocations", json=record)
    assert single.json()["predictions"] == expected["predictions"][:1]


def test_invocations_json_errors(make_client, record):
    client = make_client(api_max_rows=2)
    bad = client.post("/invocations", json={"dataframe_split": {"columns": ["age"], "data": [[1, 2]]}})
    assert bad.status_code == 422
    missing = client.post("/invocations", json={"instances": [{"age": 1}]})
    assert missing.status_code == 422
    assert ["body", "instances", 0, "sex"] in [e["loc"] for e in missing.json()["detail"]]
    assert client.post("/invocations", json={"instances": [record] * 3}).status_code == 413
    split = {"columns": list(record), "data": [list(record.values())] * 3}
    assert client.post("/invocations", json={"dataframe_split": split}).status_code == 413
    response = client.post("/invocations", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 415


# -- OpenAPI ------------------------------------------------------------------------------------------------------


def test_openapi_has_the_models_schema(make_client):
    client = make_client()
    schema = client.get("/openapi.json").json()
    record = schema["components"]["schemas"]["Record"]
    assert record["required"] == ["age", "hours_per_week", "score", "work_class", "sex"]
    assert record["additionalProperties"] is False
    assert record["properties"]["age"]["type"] == "integer"
    assert record["properties"]["sex"]["enum"] == ["Female", "Male"]
    assert "example" in record
    assert client.get("/docs").status_code == 200


# -- hot swap -------------------------------------------------------------------------------------------------------


def test_swap_under_load_drops_no_request(settings_factory, model_file, small_model_v2, record):
    """40 concurrent clients keep posting while the model file is replaced and reloaded: every request answers 200,
    requests keep being answered while the new model loads (off the event loop), each answer comes from one model or
    the other — all of version 1, then all of version 2 — and every request sent after the swap sees the new one."""
    app = create_app(settings_factory(), model_source=model_file)
    store = app.state.store
    workers, after_swap, before_swap = 40, 10, 300

    async def scenario():
        assert await store.refresh()
        loading = False
        swapped = asyncio.Event()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            # (status, version, sent after the swap, answered while the new model was loading)
            results: list[tuple[int, str | None, bool, bool]] = []

            async def worker():
                after = 0
                while after < after_swap:
                    was_swapped = swapped.is_set()
                    response = await client.post("/predict", json=[record, record])
                    version = response.json()["model"]["version"] if response.status_code == 200 else None
                    results.append((response.status_code, version, was_swapped, loading))
                    after += was_swapped
                    await asyncio.sleep(0)  # ASGITransport never suspends by itself: let the other clients in

            async def swapper():
                nonlocal loading
                while len(results) < before_swap:
                    await asyncio.sleep(0.01)
                replacement = model_file.with_suffix(".tmp")
                shutil.copyfile(small_model_v2, replacement)
                os.replace(replacement, model_file)
                loading = True
                assert await store.refresh()
                loading = False
                swapped.set()

            await asyncio.gather(*(worker() for _ in range(workers)), swapper())
            return results

    results = asyncio.run(scenario())
    assert [status for status, _, _, _ in results] == [200] * len(results)
    assert sum(after for _, _, after, _ in results) == workers * after_swap  # each client: exactly 10 after the swap
    assert sum(during for _, _, _, during in results) > 0  # no gap: answers kept coming while the new model loaded
    versions = [version for _, version, _, _ in results]
    first_new = versions.index("2")
    assert first_new >= before_swap  # the first 300 answers all came before the file was replaced
    assert versions == ["1"] * first_new + ["2"] * (len(versions) - first_new)  # never the old model once swapped
    assert {version for _, version, after, _ in results if after} == {"2"}
    assert store.swaps == 2


# -- the course model -------------------------------------------------------------------------------------------------


@pytest.mark.course
def test_course_model_csv_matches_the_core(make_client, course_model_path, course_batch_path):
    lines = course_batch_path.read_text().splitlines()[:201]
    text = "\n".join(lines) + "\n"
    client = make_client(source=course_model_path)
    response = client.post("/invocations", content=text, headers={"content-type": "text/csv", "accept": "text/csv"})
    assert response.status_code == 200
    expected, _ = score_csv_text(TabularModel(course_model_path), text)
    core = [row[-3:] for row in csv.reader(io.StringIO(expected))][1:]  # the batch output's header: the API has none
    api = list(csv.reader(io.StringIO(response.text)))
    assert len(api) == len(core) == 200
    assert [row[0] for row in api] == [row[0] for row in core]  # labels; probabilities up to ORT's thread rounding
    for a, b in zip(api, core, strict=True):
        assert [float(x) for x in a[1:]] == pytest.approx([float(x) for x in b[1:]], abs=2e-6)


@pytest.mark.course
def test_course_model_json(make_client, course_model_path, course_batch_path):
    with course_batch_path.open() as handle:
        rows = [row for _, row in zip(range(5), csv.DictReader(handle), strict=False)]
    records = [
        {
            k: (int(float(v)) if k in ("age", "capital_gain", "capital_loss", "hours_per_week") else v)
            for k, v in r.items()
        }
        for r in rows
    ]
    client = make_client(source=course_model_path)
    response = client.post("/predict", json=records)
    assert response.status_code == 200
    assert [p["label"] for p in response.json()["predictions"]] == TabularModel(course_model_path).predict_records(
        records
    ).labels.tolist()
    assert client.get("/metadata").json()["classes"] == ["<=50K", ">50K"]


# -- the lab's own model (mlops_lab.train) --------------------------------------------------------------------------


def test_trained_model_serves_generated_rows(make_client, trained_model_path):
    """The model `mlops-lab train` exports, scored through /predict and /invocations on rows `synthetic.generate` makes."""
    from mlops_lab.synthetic import generate

    client = make_client(source=trained_model_path)
    meta = client.get("/metadata").json()
    names = [item["name"] for item in meta["inputs"]]
    frame = generate(20, seed=7, with_label=False)[names]
    records = json.loads(frame.to_json(orient="records"))
    response = client.post("/predict", json=records)
    assert response.status_code == 200, response.text
    expected = TabularModel(trained_model_path).predict_records(records).labels.tolist()
    assert [p["label"] for p in response.json()["predictions"]] == expected
    as_csv = client.post("/invocations", content=frame.to_csv(index=False), headers={"content-type": "text/csv"})
    assert [p["label"] for p in as_csv.json()["predictions"]] == expected


@pytest.mark.parametrize("body", [b"\r0", b"0\r\r\n1", b'"unterminated', b"\x00,1\n"])
def test_odd_csv_is_422_not_500(make_client, body):
    """Bodies schemathesis found: the header sniffing must not raise past the error handling."""
    response = make_client().post("/invocations", content=body, headers={"content-type": "text/csv"})
    assert response.status_code == 422, response.text
