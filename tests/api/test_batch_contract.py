"""The container side of SageMaker Batch Transform, through the real app: `/invocations` answers a mini-batch one
line per record (CSV or JSON Lines, no header), reads headerless batches and JSON Lines, admits a full
`MaxPayloadInMB` payload; `/execution-parameters`; a model served from a directory (what SageMaker unpacks in
/opt/ml/model), and which source serves when none is named."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from mlops_lab.api.model_store import DirectorySource, ModelDirectoryError, default_model_source, directory_identity
from mlops_lab.api.payloads import is_header
from mlops_lab.api.routes.sagemaker import BatchEnvironmentError, ExecutionParameters
from mlops_lab.data import FEATURES
from mlops_lab.inference import TabularModel
from tests import model_zoo

CSV_IN = {"content-type": "text/csv"}
CSV_BOTH = {"content-type": "text/csv", "accept": "text/csv"}
JSONL = "application/jsonlines"


@pytest.fixture
def batch_client(make_client):
    """``batch_client(source=..., environ={...}, **settings)`` → a started TestClient whose container environment is
    ``environ`` (default: none of SageMaker's variables)."""

    def make(source=None, *, environ=None, **overrides):
        return make_client(source, environ=environ if environ is not None else {}, **overrides)

    return make


def small_records(n: int, seed: int = 4) -> list[dict]:
    columns = model_zoo.make_rows(n, seed)
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def headerless_csv(records: list[dict], names: list[str]) -> str:
    return "".join(",".join(str(record[name]) for name in names) + "\n" for record in records)


def feature_names(client) -> list[str]:
    return [item["name"] for item in client.get("/metadata").json()["inputs"]]


def expected_csv_lines(client, records: list[dict]) -> list[list[str]]:
    """What the answer's lines must say: /predict's labels and probabilities (6 decimals), record by record."""
    predictions = client.post("/predict", json=records).json()["predictions"]
    return [[p["label"], *(f"{v:.6f}" for v in p["probabilities"].values())] for p in predictions]


# -- CSV: one line per record, no header ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 1000])
def test_csv_answer_is_one_line_per_record_and_no_header(batch_client, n):
    client = batch_client()
    records = small_records(n)
    response = client.post("/invocations", content=headerless_csv(records, feature_names(client)), headers=CSV_BOTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text.endswith("\n") and "\n\n" not in response.text
    lines = list(csv.reader(io.StringIO(response.text)))
    assert len(lines) == n
    assert lines == expected_csv_lines(client, records)  # line i answers record i (no header line shifts them)


def test_a_people_header_is_still_read_and_not_answered(batch_client):
    client = batch_client()
    records = small_records(3)
    names = feature_names(client)
    reordered = list(reversed(names))
    with_header = ",".join(reordered) + "\n" + headerless_csv(records, reordered)
    response = client.post("/invocations", content=with_header, headers=CSV_BOTH)
    assert list(csv.reader(io.StringIO(response.text))) == expected_csv_lines(client, records)


def test_blank_lines_are_not_records(batch_client):
    """A blank line gets no answer line (the transform runner never sends one: it would shift every later answer)."""
    client = batch_client()
    records = small_records(3)
    lines = headerless_csv(records, feature_names(client)).splitlines()
    body = "\n" + lines[0] + "\n\n" + lines[1] + "\r\n\r\n" + lines[2] + "\n\n"
    response = client.post("/invocations", content=body, headers=CSV_BOTH)
    assert response.status_code == 200, response.text
    assert list(csv.reader(io.StringIO(response.text))) == expected_csv_lines(client, records)
    for empty in ("", "\n\n", "\r\n"):
        refused = client.post("/invocations", content=empty, headers=CSV_IN)
        assert refused.status_code == 422
        assert refused.json()["detail"] == "no records: the body is empty (or blank lines only)"


def test_errors_name_the_bodys_own_line_after_leading_blank_lines(batch_client):
    client = batch_client()
    lines = headerless_csv(small_records(2), feature_names(client)).splitlines()
    body = "\n\n" + lines[0] + "\n" + "1,2\n"
    response = client.post("/invocations", content=body, headers=CSV_IN)
    assert response.status_code == 422
    assert response.json()["rows"] == [{"row": 4, "fields": 2, "expected": len(lines[0].split(","))}]


# -- the header rule, on the course's columns --------------------------------------------------------------------------


def test_header_rule_on_the_course_columns():
    names = list(FEATURES)
    record = ["39", "Private", "Masters", "Married", "Professional", "Wife", "White", "Female", "0", "0", "40", "China"]
    assert is_header(names, names)
    assert is_header(list(reversed(names)), names)  # any order
    assert is_header([f" {name}" for name in names], names)  # spaces after commas
    assert is_header(names[:-1], names)  # a column missing: the header's own error follows
    assert is_header([*names, "id"], names)  # one too many: likewise
    assert not is_header(record, names)
    # a record whose text happens to be column names (a free-text field could hold anything) is still a record
    assert not is_header([*record[:4], "occupation", "relationship", *record[6:10], "sex", "race"], names)
    assert not is_header([], names)


@pytest.mark.course
def test_course_batch_whose_first_record_looks_like_a_header_is_scored(batch_client, course_model_path):
    client = batch_client(source=course_model_path)
    record = "39,Local-gov,Masters,Married,{},Wife,White,Female,0.0,0.0,28.0,{}"
    plain = [record.format("Professional", "United-States"), record.format("Sales", "China")]
    named = [record.format("occupation", "native_country"), plain[1]]  # text that is a column name
    model = TabularModel(course_model_path)
    for lines in (plain, named):
        response = client.post("/invocations", content="\n".join(lines) + "\n", headers=CSV_BOTH)
        assert response.status_code == 200, response.text
        answer = list(csv.reader(io.StringIO(response.text)))
        assert len(answer) == 2
        rows = list(csv.reader(lines))
        expected = model.predict({name: [row[i] for row in rows] for i, name in enumerate(FEATURES)}).label_texts()
        assert [line[0] for line in answer] == expected
    missing = client.post("/invocations", content=",".join(FEATURES[:-1]) + "\n" + plain[0], headers=CSV_IN)
    assert missing.status_code == 422 and missing.json()["columns"] == ["native_country"]


# -- JSON Lines --------------------------------------------------------------------------------------------------------


def test_jsonlines_in_and_out(batch_client):
    client = batch_client()
    records = small_records(5)
    names = feature_names(client)
    objects = "".join(json.dumps(record) + "\n" for record in records)
    arrays = "".join(json.dumps([record[name] for name in names]) + "\n" for record in records)
    expected = [
        {"prediction": p["label"], **{f"probability_{c}": round(v, 6) for c, v in p["probabilities"].items()}}
        for p in client.post("/predict", json=records).json()["predictions"]
    ]
    for content_type in (JSONL, "application/x-jsonlines"):
        for body in (objects, arrays, "\n" + objects.replace("\n", "\n\n")):
            response = client.post(
                "/invocations", content=body, headers={"content-type": content_type, "accept": content_type}
            )
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith(content_type)
            assert [json.loads(line) for line in response.text.splitlines()] == expected
            assert response.text.count("\n") == len(records)


def test_csv_and_jsonlines_mix_both_ways(batch_client):
    client = batch_client()
    records = small_records(4)
    names = feature_names(client)
    objects = "".join(json.dumps(record) + "\n" for record in records)
    jsonl_to_csv = client.post("/invocations", content=objects, headers={"content-type": JSONL, "accept": "text/csv"})
    assert list(csv.reader(io.StringIO(jsonl_to_csv.text))) == expected_csv_lines(client, records)
    csv_to_jsonl = client.post(
        "/invocations", content=headerless_csv(records, names), headers={"content-type": "text/csv", "accept": JSONL}
    )
    as_csv_fields = [
        [row["prediction"], *(f"{row[f'probability_{c}']:.6f}" for c in ("<=50K", ">50K"))]
        for row in map(json.loads, csv_to_jsonl.text.splitlines())
    ]
    assert as_csv_fields == expected_csv_lines(client, records)
    as_json = client.post("/invocations", content=objects, headers={"content-type": JSONL})
    assert as_json.json() == client.post("/predict", json=records).json()


def test_jsonlines_answers_of_a_regressor_and_a_label_only_model(batch_client, regressor_model, label_only_model):
    from tests.api.support import model_case

    for kind, path in (("regressor", regressor_model), ("label-only", label_only_model)):
        case = model_case(kind, path)
        client = batch_client(source=path)
        body = "".join(json.dumps(row) + "\n" for row in case.rows[:3].tolist())
        response = client.post("/invocations", content=body, headers={"content-type": JSONL, "accept": JSONL})
        assert response.status_code == 200, response.text
        rows = [json.loads(line) for line in response.text.splitlines()]
        expected = case.onnxruntime_rows(case.rows[:3])
        assert [list(row) for row in rows] == [["prediction"]] * 3
        if kind == "regressor":
            assert [row["prediction"] for row in rows] == pytest.approx([r["prediction"] for r in expected])
        else:
            assert [row["prediction"] for row in rows] == [r["label"] for r in expected]


def test_jsonlines_errors_name_the_line(batch_client):
    client = batch_client()
    record = small_records(1)[0]
    headers = {"content-type": JSONL}
    wrong_type = json.dumps(record) + "\n\n" + json.dumps(record | {"age": "old"}) + "\n"
    detail = client.post("/invocations", content=wrong_type, headers=headers).json()["detail"]
    assert [(d["loc"], d["type"]) for d in detail] == [(["body", "line", 3, "age"], "int_type")]
    short = client.post("/invocations", content=json.dumps(record) + "\n[1, 2]\n", headers=headers)
    assert short.status_code == 422 and short.json()["detail"][0]["loc"] == ["body", "line", 2]
    assert "expected 5 values in the model's feature order" in short.json()["detail"][0]["msg"]
    broken = client.post("/invocations", content=b"{not json\n", headers=headers)
    assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid"
    scalar = client.post("/invocations", content=b"3\n", headers=headers)
    assert scalar.status_code == 422 and "expected a JSON object" in scalar.json()["detail"][0]["msg"]
    assert client.post("/invocations", content=b"\n \n", headers=headers).status_code == 422


def test_an_accept_it_cannot_answer_is_406(batch_client):
    client = batch_client()
    body = headerless_csv(small_records(1), feature_names(client))
    response = client.post("/invocations", content=body, headers={"content-type": "text/csv", "accept": "text/html"})
    assert response.status_code == 406 and "text/csv, application/jsonlines" in response.json()["detail"]
    assert client.post("/invocations", content=body, headers=CSV_IN | {"accept": "*/*"}).json()["predictions"]


# -- limits: a full MaxPayloadInMB payload -----------------------------------------------------------------------------


def test_invocations_admit_a_full_payload_beyond_the_body_limit(batch_client):
    """LAB_API_MAX_BODY_BYTES (here 2 KB) bounds /predict; /invocations takes a whole MaxPayloadInMB payload."""
    client = batch_client(api_max_body_bytes=2048)
    records = small_records(200)
    body = headerless_csv(records, feature_names(client))
    assert len(body) > 2048
    assert client.post("/predict", json=records).status_code == 413
    response = client.post("/invocations", content=body, headers=CSV_BOTH)
    assert response.status_code == 200, response.text
    assert len(response.text.splitlines()) == 200


def test_a_batch_container_is_bounded_by_its_payload_not_by_rows(batch_client):
    records = small_records(1500)
    online = batch_client(api_max_rows=1000)
    body = headerless_csv(records, feature_names(online))
    assert online.post("/invocations", content=body, headers=CSV_BOTH).status_code == 413
    batch = batch_client(api_max_rows=1000, environ={"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"})
    response = batch.post("/invocations", content=body, headers=CSV_BOTH)
    assert response.status_code == 200, response.text
    assert list(csv.reader(io.StringIO(response.text)))[-3:] == expected_csv_lines(batch, records[-3:])
    jsonl = "".join(json.dumps(record) + "\n" for record in records)
    assert (
        len(
            batch.post(
                "/invocations", content=jsonl, headers={"content-type": JSONL, "accept": JSONL}
            ).text.splitlines()
        )
        == 1500
    )
    too_big = body * (1024 * 1024 // len(body) + 1)
    refused = batch.post("/invocations", content=too_big, headers=CSV_BOTH)
    assert refused.status_code == 413
    assert refused.json()["detail"].startswith("request body over 1048576 bytes: /invocations takes a MaxPayloadInMB")


# -- /execution-parameters ---------------------------------------------------------------------------------------------


def test_execution_parameters_defaults_and_environment(batch_client):
    assert batch_client().get("/execution-parameters").json() == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
    }
    environ = {
        "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "4",
        "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "12",
    }
    client = batch_client(environ=environ)
    assert client.get("/execution-parameters").json() == {
        "MaxConcurrentTransforms": 4,
        "BatchStrategy": "SingleRecord",
        "MaxPayloadInMB": 12,
    }
    assert client.app.state.execution.body_limit(1_048_576) == 12 * 1024 * 1024
    for spelling in ("MultiRecord", "MULTIRECORD", "multi-record"):
        assert (
            ExecutionParameters.from_environment({"SAGEMAKER_BATCH_STRATEGY": spelling}).batch_strategy == "MultiRecord"
        )
    streaming = ExecutionParameters.from_environment({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"})
    assert streaming.max_payload_mb == 0 and streaming.body_limit(1) == 100 * 1024 * 1024
    assert (
        ExecutionParameters.from_environment({"SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "0"}).max_concurrent_transforms
        == 2
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "six", "SAGEMAKER_MAX_PAYLOAD_IN_MB='six' is not a whole number"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "101", "SAGEMAKER_MAX_PAYLOAD_IN_MB=101 is out of range: expected 0 to 100"),
        ("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "-1", "expected 0 or more"),
        ("SAGEMAKER_BATCH_STRATEGY", "Everything", "expected MULTI_RECORD or SINGLE_RECORD"),
    ],
)
def test_a_bad_batch_variable_stops_the_container(batch_client, name, value, message):
    with pytest.raises(BatchEnvironmentError, match=message) as raised:
        batch_client(environ={name: value})
    assert raised.value.exit_code == 1


# -- a model served from a directory -----------------------------------------------------------------------------------


def mlflow_model_dir(root: Path, model: Path, *, registered: bool = True, metadata: str = "") -> Path:
    """A folder laid out like the mlflow model `deploy sagemaker` tars up (what SageMaker unpacks in /opt/ml/model)."""
    (root / "artifacts").mkdir(parents=True)
    (root / "code").mkdir()
    shutil.copyfile(model, root / "artifacts" / "model.onnx")
    (root / "code" / "inference.py").write_text("# the lab's inference core\n")
    (root / "MLmodel").write_text(
        "artifact_path: mlflow-artifacts:/1/models/m-1/artifacts\n"
        "flavors:\n  python_function:\n    artifacts:\n      onnx:\n        path: artifacts/model.onnx\n"
        "    loader_module: mlflow.pyfunc.loaders.code_model\n"
        f"metadata:\n  format: onnx\n{metadata}"
        "model_id: m-1\nmlflow_version: 3.17.2\n"
    )
    if registered:  # as mlflow writes it when it downloads models:/<name>/<version>
        (root / "registered_model_meta").write_text("model_name: tensor-classifier\nmodel_version: '12'\n")
    return root


@pytest.fixture(scope="session")
def bare_model(models_dir: Path) -> Path:
    """A model whose ONNX file names neither itself nor its version."""
    return model_zoo.tensor_classifier(models_dir / "bare.onnx", zipmap=False)


def test_a_directory_laid_out_like_an_mlflow_model_is_served(batch_client, tmp_path, bare_model):
    folder = mlflow_model_dir(tmp_path / "model", bare_model)
    client = batch_client(source=str(folder), model_name="configured")
    meta = client.get("/metadata").json()
    assert (meta["name"], meta["version"], meta["source"]) == ("tensor-classifier", "12", str(folder))
    response = client.post("/invocations", content="0.1,0.2,0.3\n1,2,3\n", headers=CSV_BOTH)
    assert response.status_code == 200 and len(response.text.splitlines()) == 2
    expected = TabularModel(bare_model).predict({"f0": ["0.1", "1"], "f1": ["0.2", "2"], "f2": ["0.3", "3"]})
    assert [line.split(",")[0] for line in response.text.splitlines()] == expected.label_texts()


def test_directory_identity_from_mlmodel_metadata_or_nothing(tmp_path, bare_model):
    from_mlmodel = mlflow_model_dir(
        tmp_path / "a", bare_model, registered=False, metadata="  model_name: from-mlmodel\n  model_version: '4'\n"
    )
    assert directory_identity(from_mlmodel) == ("from-mlmodel", "4")
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copyfile(bare_model, plain / "model.onnx")
    assert directory_identity(plain) == (None, None)
    assert directory_identity(mlflow_model_dir(tmp_path / "b", bare_model, registered=False)) == (None, None)


def test_a_directory_with_no_model_or_several_is_refused_by_name(batch_client, tmp_path, bare_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelDirectoryError, match=f"no .onnx file in model directory {empty}"):
        DirectorySource(empty).fingerprint()
    several = mlflow_model_dir(tmp_path / "several", bare_model)
    shutil.copyfile(bare_model, several / "old.onnx")
    with pytest.raises(
        ModelDirectoryError, match=r"2 .onnx files in model directory .*\(artifacts/model.onnx, old.onnx\)"
    ):
        DirectorySource(several).fetch()
    ready = batch_client(source=str(several)).get("/ready")
    assert ready.status_code == 503 and "2 .onnx files in model directory" in ready.json()["error"]


def test_a_directory_swaps_when_its_model_changes(batch_client, tmp_path, bare_model, small_model):
    folder = mlflow_model_dir(tmp_path / "model", bare_model)
    client = batch_client(source=str(folder))
    source = client.app.state.store.source
    before = source.fingerprint()
    assert source.fingerprint() == before  # cheap and stable while nothing changes
    (folder / "registered_model_meta").write_text("model_name: tensor-classifier\nmodel_version: '13'\n")
    assert source.fingerprint() != before
    shutil.copyfile(small_model, folder / "artifacts" / "model.onnx.tmp")
    (folder / "artifacts" / "model.onnx.tmp").replace(folder / "artifacts" / "model.onnx")
    assert client.app.state.store.check()
    assert "work_class" in feature_names(client)


# -- which source serves when none is named ----------------------------------------------------------------------------


def test_default_source_resolution_order(settings_factory, tmp_path):
    sagemaker_dir = tmp_path / "opt-ml-model"
    plain = settings_factory()
    assert default_model_source(plain, {}, sagemaker_dir) == "s3"
    assert default_model_source(plain, {"SAGEMAKER_BATCH": "true"}, sagemaker_dir) == sagemaker_dir
    assert default_model_source(plain, {"SAGEMAKER_BATCH": "false"}, sagemaker_dir) == "s3"
    sagemaker_dir.mkdir()  # an endpoint's container: SageMaker unpacked the model data there
    assert default_model_source(plain, {}, sagemaker_dir) == sagemaker_dir
    configured = settings_factory(api_model_source="s3://bucket/model.onnx")
    assert default_model_source(configured, {"SAGEMAKER_BATCH": "true"}, sagemaker_dir) == "s3://bucket/model.onnx"


def test_the_app_serves_the_sagemaker_model_directory_by_default(settings_factory, tmp_path, bare_model, monkeypatch):
    from fastapi.testclient import TestClient

    from mlops_lab.api import model_store
    from mlops_lab.api.app import create_app

    sagemaker_dir = mlflow_model_dir(tmp_path / "opt" / "ml" / "model", bare_model)
    monkeypatch.setattr(model_store, "SAGEMAKER_MODEL_DIR", sagemaker_dir)
    app = create_app(settings_factory(), environ={"SAGEMAKER_BATCH": "true"})
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/ready").json()["source"] == str(sagemaker_dir)
        assert client.get("/metadata").json()["version"] == "12"


def test_the_container_refuses_a_bad_variable_in_one_line(tmp_path, bare_model):
    """`python -m mlops_lab.api serve` as SageMaker starts it: a variable it cannot use ends it with the reason."""
    import os
    import subprocess
    import sys

    environment = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    environment |= {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "six", "LAB_STATE_DIR": str(tmp_path)}
    model_dir = mlflow_model_dir(tmp_path / "model", bare_model)
    command = [sys.executable, "-m", "mlops_lab.api", "serve", "--port", "1", "--model-source", str(model_dir)]
    ended = subprocess.run(command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert ended.returncode == 1
    assert ended.stderr.strip().splitlines() == [
        "mlops_lab.api: SAGEMAKER_MAX_PAYLOAD_IN_MB='six' is not a whole number"
    ]
