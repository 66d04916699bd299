"""The API serves whichever model is live, of every kind: a regressor, a multi-class classifier (probabilities as a
tensor or a ZipMap), a classifier that gives labels only. Answers are checked against onnxruntime run here on the
same rows; identity, kind, the SageMaker contract, the OpenAPI document and the errors follow the model."""

from __future__ import annotations

import csv
import io
import json
import shutil
from types import SimpleNamespace

import jsonschema_rs
import numpy as np
import pytest

from mlops_lab.inference import SMALL_BATCH, TabularModel, score_csv_text
from tests.api.support import StaticSource, as_records, model_case
from tests.model_zoo import diabetes


def assert_rows_equal(got: list[dict], expected: list[dict]) -> None:
    """Same labels, same keys; values equal up to float32 rounding (onnxruntime's results may differ in the last bits
    with its thread count; the API runs one thread per session)."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert set(a) == set(b)
        if "label" in b:
            assert a["label"] == b["label"]
        if "prediction" in b:
            assert a["prediction"] == pytest.approx(b["prediction"], rel=1e-6)
        if "probabilities" in b:
            assert list(a["probabilities"]) == list(b["probabilities"])
            assert a["probabilities"] == pytest.approx(b["probabilities"], rel=1e-5, abs=1e-7)


def csv_body(case, rows: np.ndarray, *, header: bool) -> str:
    sink = io.StringIO()
    writer = csv.writer(sink, lineterminator="\n")
    if header:
        writer.writerow(case.features)
    writer.writerows(rows.astype(np.float32).tolist())
    return sink.getvalue()


# -- /predict -----------------------------------------------------------------------------------------------------


def test_predict_answers_what_onnxruntime_answers(make_client, case):
    """One record (the core's fast path), a few, and more than SMALL_BATCH (the general path): every row as
    onnxruntime scores it, in the row shape of the model's kind."""
    client = make_client(source=case.path)
    expected = case.onnxruntime_rows()
    assert len(case.records) > SMALL_BATCH
    for records in (case.records[:1], case.records[:3], case.records):
        response = client.post("/predict", json=records)
        assert response.status_code == 200, response.text
        assert_rows_equal(response.json()["predictions"], expected[: len(records)])
    one = client.post("/predict", json=case.records[-1])
    assert_rows_equal(one.json()["predictions"], expected[-1:])


def test_regressor_rows_are_numbers(make_client, regressor_model):
    case = model_case("regressor", regressor_model)
    predictions = make_client(source=case.path).post("/predict", json=case.records[:2]).json()["predictions"]
    assert [set(row) for row in predictions] == [{"prediction"}, {"prediction"}]
    assert all(type(row["prediction"]) is float for row in predictions)


def test_label_only_rows_have_no_probabilities(make_client, label_only_model):
    case = model_case("label-only", label_only_model)
    predictions = make_client(source=case.path).post("/predict", json=case.records).json()["predictions"]
    assert {row["label"] for row in predictions} == {"setosa", "versicolor", "virginica"}
    assert all(set(row) == {"label"} for row in predictions)


# -- identity and /metadata ---------------------------------------------------------------------------------------


def test_metadata_identity_and_kind(make_client, case):
    """The model's own name and version (its ONNX metadata), not the configured name; its kind and classes."""
    client = make_client(source=case.path)  # configured name: income-classifier
    meta = client.get("/metadata").json()
    assert {"name": meta["name"], "version": meta["version"]} == case.identity
    assert (meta["kind"], meta["classes"]) == (case.kind, case.classes)
    assert [item["name"] for item in meta["inputs"]] == case.features
    assert client.get("/ready").json()["model"] == case.identity
    assert client.post("/predict", json=case.records[:1]).json()["model"] == case.identity
    assert client.post("/invocations", json=case.records[:1]).json()["model"] == case.identity


def test_the_lab_models_metadata_says_classifier(make_client):
    meta = make_client().get("/metadata").json()
    assert (meta["kind"], meta["classes"]) == ("classifier", ["<=50K", ">50K"])


def test_identity_from_metadata_before_the_source_and_the_configured_name(
    make_client, regressor_model, small_model, record
):
    # the model names itself and its version: the source's say and the configured name do not count
    client = make_client(source=StaticSource(regressor_model, name="from-source", version="99"), model_name="cfg")
    assert client.get("/metadata").json()["name"] == "diabetes-regressor"
    assert client.get("/metadata").json()["version"] == "7"
    # the small model has a version (model_version) but no name: the source's name, else the configured one
    client = make_client(source=StaticSource(small_model, name="from-source", version="99"), model_name="cfg")
    assert client.post("/predict", json=record).json()["model"] == {"name": "from-source", "version": "1"}
    client = make_client(source=small_model, model_name="cfg")
    assert client.post("/predict", json=record).json()["model"] == {"name": "cfg", "version": "1"}


# -- SageMaker /invocations ---------------------------------------------------------------------------------------


def test_invocations_csv_out_is_the_batch_columns(make_client, case):
    """CSV in (with or without a header), CSV out: ``prediction`` plus probability columns only when the model gives
    them, byte for byte the batch Lambda's output columns (score_csv) for the same rows."""
    client = make_client(source=case.path)
    headers = {"content-type": "text/csv", "accept": "text/csv"}
    with_header = client.post("/invocations", content=csv_body(case, case.rows, header=True), headers=headers)
    without = client.post("/invocations", content=csv_body(case, case.rows, header=False), headers=headers)
    assert with_header.status_code == without.status_code == 200, with_header.text
    assert with_header.headers["content-type"].startswith("text/csv")
    assert with_header.text == without.text
    table = list(csv.reader(io.StringIO(with_header.text)))
    assert len(table) == len(case.rows)  # one line per record and no header (SageMaker's batch output)
    batch, _ = score_csv_text(TabularModel(case.path), csv_body(case, case.rows, header=True))
    width = 1 + len(case.classes)
    batch_table = [row[-width:] for row in csv.reader(io.StringIO(batch))]
    assert batch_table[0] == ["prediction", *(f"probability_{c}" for c in case.classes)]  # the Lambda's header
    assert batch_table[1:] == table
    expected = case.onnxruntime_rows()
    if case.kind == "regressor":  # a number, in the float32's shortest form
        assert [np.float32(row[0]) for row in table] == [np.float32(r["prediction"]) for r in expected]
    else:
        assert [row[0] for row in table] == [r["label"] for r in expected]


def test_invocations_json_out_follows_the_rows(make_client, case):
    client = make_client(source=case.path)
    records = case.records[:5]
    expected = client.post("/predict", json=records).content
    split = {"columns": case.features, "data": case.rows[:5].astype(np.float32).tolist()}
    for body in (records, {"instances": records}, {"dataframe_records": records}, {"dataframe_split": split}):
        response = client.post("/invocations", json=body)
        assert response.status_code == 200, (body, response.text)
        assert response.content == expected
    from_csv = client.post(
        "/invocations", content=csv_body(case, case.rows[:5], header=False), headers={"content-type": "text/csv"}
    )
    assert_rows_equal(from_csv.json()["predictions"], case.onnxruntime_rows(case.rows[:5]))


# -- OpenAPI --------------------------------------------------------------------------------------------------------


def test_openapi_follows_the_live_model(make_client, case):
    """The request record has the live model's columns; the response rows its kind's shape (and no other); the
    examples are the model's own: its example record scores to the documented example response."""
    client = make_client(source=case.path)
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    record = components["Record"]
    assert list(record["properties"]) == record["required"] == case.features
    assert record["additionalProperties"] is False
    answer = client.post("/predict", json=record["example"])
    assert answer.status_code == 200
    assert answer.json() == components["PredictResponse"]["example"]
    row = components["Prediction"]
    assert components["PredictResponse"]["properties"]["predictions"]["items"] == {
        "$ref": "#/components/schemas/Prediction"
    }
    for prediction in client.post("/predict", json=case.records).json()["predictions"]:
        jsonschema_rs.validate(row, prediction)
    own = set(answer.json()["predictions"][0])
    others = [
        {"prediction": 1.5},
        {"label": "x"},
        {"label": "x", "probabilities": {"a": 1.0}},
        {"label": "x", "probabilities": {}},
    ]
    for other in others:  # the other kinds' rows, and probabilities of classes the model does not have
        if set(other) != own or "probabilities" in own:
            assert not jsonschema_rs.is_valid(row, other), other
    csv_example = schema["paths"]["/invocations"]["post"]["responses"]["200"]["content"]["text/csv"]["example"]
    example = components["PredictResponse"]["example"]["predictions"][0]  # the same row, as /invocations' CSV line
    first, *probabilities = csv_example.removesuffix("\n").split(",")
    assert "\n" not in csv_example.removesuffix("\n")  # one line: no header
    if case.kind == "regressor":
        assert np.float32(first) == np.float32(example["prediction"])
    else:
        assert first == example["label"]
    assert [float(p) for p in probabilities] == pytest.approx(list(example.get("probabilities", {}).values()), abs=1e-6)
    assert client.get("/docs").status_code == 200


def test_openapi_before_any_model_allows_every_row_shape(make_client, tmp_path):
    schema = make_client(source=tmp_path / "not-yet.onnx").get("/openapi.json").json()
    items = schema["components"]["schemas"]["PredictResponse"]["properties"]["predictions"]["items"]
    refs = {ref["$ref"].rsplit("/", 1)[1] for ref in items["anyOf"]}
    assert refs == {"ClassPrediction", "LabelPrediction", "ValuePrediction"}
    assert "Prediction" not in schema["components"]["schemas"]


def test_swapping_kinds_swaps_schema_answers_and_metadata(make_client, model_file, regressor_model, record):
    """The lab's classifier is replaced in place by a regressor: everything follows the new model."""
    client = make_client(source=model_file)
    assert "age" in client.get("/openapi.json").json()["components"]["schemas"]["Record"]["properties"]
    shutil.copyfile(regressor_model, model_file)
    assert client.app.state.store.check()
    case = model_case("regressor", regressor_model)
    assert client.get("/metadata").json()["kind"] == "regressor"
    record_schema = client.get("/openapi.json").json()["components"]["schemas"]["Record"]
    assert record_schema["required"] == case.features
    response = client.post("/predict", json=case.records[:2])
    assert response.status_code == 200
    assert_rows_equal(response.json()["predictions"], case.onnxruntime_rows(case.rows[:2]))
    assert client.post("/predict", json=record).status_code == 422  # the classifier's record is no longer one


# -- errors ---------------------------------------------------------------------------------------------------------


def test_bad_requests_are_a_clear_422(make_client, case):
    client = make_client(source=case.path)
    good = case.records[0]
    first, last = case.features[0], case.features[-1]
    for body, loc, error_type in [
        (good | {first: "high"}, ["body", first], "float_type"),
        (good | {first: None}, ["body", first], "float_type"),
        ({k: v for k, v in good.items() if k != last}, ["body", last], "missing"),
        (good | {"target": 1.0}, ["body", "target"], "extra_forbidden"),
        ([good, good | {first: True}], ["body", 1, first], "float_type"),
    ]:
        response = client.post("/predict", json=body)
        assert response.status_code == 422, body
        (error,) = response.json()["detail"]
        assert (error["loc"], error["type"]) == (loc, error_type)
    bad_csv = csv_body(case, case.rows[:3], header=True).splitlines()
    bad_csv[2] = "x," + bad_csv[2].split(",", 1)[1]
    response = client.post("/invocations", content="\n".join(bad_csv), headers={"content-type": "text/csv"})
    assert response.status_code == 422
    assert response.json()["rows"] == [{"row": 3, "column": first, "value": "x"}]


# -- the mlflow pyfunc ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pyfunc():
    from mlops_lab import onnx_pyfunc

    def load(path):
        model = onnx_pyfunc.OnnxTabularModel()
        model.load_context(SimpleNamespace(artifacts={"onnx": str(path)}))
        return model

    return load


def test_pyfunc_output_columns(pyfunc, case):
    import pandas as pd

    frame = pd.DataFrame(case.rows, columns=case.features)
    out = pyfunc(case.path).predict(None, frame)
    assert list(out.columns) == ["prediction", *(f"probability_{c}" for c in case.classes)]
    assert len(out) == len(case.rows)
    expected = case.onnxruntime_rows()
    if case.kind == "regressor":
        assert out["prediction"].dtype == np.float32  # the model's own output type
        assert out["prediction"].tolist() == pytest.approx([r["prediction"] for r in expected], rel=1e-6)
    else:
        assert out["prediction"].tolist() == [r["label"] for r in expected]
    for i, name in enumerate(case.classes):
        probabilities = [r["probabilities"][name] for r in expected]
        assert out.iloc[:, 1 + i].tolist() == pytest.approx(probabilities, rel=1e-5, abs=1e-7)


def test_pyfunc_regressor_json_is_numbers(pyfunc, regressor_model):
    """What mlflow's scoring server would send back: numbers, not strings."""
    import pandas as pd

    names, x, _ = diabetes()
    out = pyfunc(regressor_model).predict(None, pd.DataFrame(as_records(names, x[:2])))
    assert all(isinstance(row["prediction"], float) for row in json.loads(out.to_json(orient="records")))
