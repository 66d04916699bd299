"""Bring your own model, end to end: `mlops-lab publish` on the session's emulator (and mlflow server), then the
Lambda and the API serve the model under its own name and version.

The published model is put back at the end of the module, so later modules find the session's own model live.
"""

from __future__ import annotations

import csv
import io
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mlops_lab import jobs, model, registry, training
from mlops_lab.cli import app
from mlops_lab.contract import META_MODEL_NAME, META_MODEL_VERSION, prediction_key
from mlops_lab.inference import TabularModel, score_csv
from tests.api.support import ort_outputs
from tests.model_zoo import users_diabetes_regressor, users_iris_classifier
from tests.support import Lab

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("live_model_put_back")


@pytest.fixture
def with_mlflow(cli_env: None, mlflow_lab: Lab) -> Lab:
    """The CLI pointed at the session's emulator and its mlflow server."""
    return mlflow_lab


def publish(*arguments: object) -> str:
    result = runner.invoke(app, ["publish", *map(str, arguments)])
    assert result.exit_code == 0, result.output
    return result.output


def read_rows(path: Path) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(path.open(newline="")))
    return rows[0], np.array(rows[1:], dtype=np.float64)


def test_the_course_model_published_by_command_scores_its_batch_through_the_lambda(
    cli_env: None, lab_stack: Lab, course_model_path: Path, course_batch_path: Path, tmp_path: Path
) -> None:
    output = publish(course_model_path, "--no-mlflow")
    assert "course (not registered" in output and "categories read from the graph for" in output, output
    result = jobs.predict_file(
        lab_stack.settings, lab_stack.aws, course_batch_path, key="byom/course.csv", out_dir=tmp_path
    )
    assert (result.status, result.rows, result.model) == ("ok", 10090, "course")
    sink = io.StringIO()
    with course_batch_path.open(newline="") as source:
        score_csv(TabularModel(course_model_path), source, sink)  # in-process onnxruntime on the file as it came
    assert result.local_path.read_text() == sink.getvalue()


def test_a_regressor_through_the_lambda_and_the_api(with_mlflow: Lab, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, aws = with_mlflow.settings, with_mlflow.aws
    model_path, rows_path = users_diabetes_regressor(tmp_path)
    output = publish(model_path, "--name", "diabetes", "--features-from", rows_path, "--sample", rows_path)
    (latest, *_) = registry.list_versions(settings, aws, name="diabetes")
    assert f"diabetes version {latest.version}" in output and latest.live, output
    import mlflow

    registered = mlflow.models.get_model_info(f"models:/diabetes/{latest.version}")
    assert registered.signature is not None and registered.saved_input_example_info is not None
    assert registered.signature.inputs.input_names()[:2] == ["age", "sex"]  # the names it was given
    header, matrix = read_rows(rows_path)
    expected = ort_outputs(model_path, matrix)[0].reshape(-1)

    # Batch: the prediction column, under the model's own name and version.
    result = jobs.predict_file(settings, aws, rows_path, key="byom/diabetes.csv", out_dir=tmp_path / "out")
    assert (result.status, result.rows, result.model) == ("ok", 60, f"diabetes {latest.version}")
    scored = list(csv.reader(result.local_path.open(newline="")))
    assert scored[0] == [*header, "prediction"]
    assert np.array([row[-1] for row in scored[1:]], dtype=np.float32).tolist() == expected.tolist()
    assert result.value_range == pytest.approx((float(expected.min()), float(expected.max())), rel=1e-6)
    head = with_mlflow.s3().head_object(Bucket=settings.output_bucket, Key=prediction_key("byom/diabetes.csv"))
    assert head["Metadata"][META_MODEL_NAME] == "diabetes" and head["Metadata"][META_MODEL_VERSION] == latest.version

    # Online: the API swaps to it and answers {"prediction": …} under the same identity.
    deadline = time.monotonic() + 30
    while (meta := api.get("/metadata").json())["name"] != "diabetes":
        assert time.monotonic() < deadline, meta
        time.sleep(0.2)
    assert (meta["version"], meta["kind"], meta["classes"]) == (latest.version, "regressor", [])
    records = [dict(zip(header, map(float, row), strict=True)) for row in matrix[:3]]
    answer = api.post("/predict", json=records)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == {"name": "diabetes", "version": latest.version}
    assert [row["prediction"] for row in body["predictions"]] == pytest.approx(expected[:3].tolist(), rel=1e-6)


def test_a_multiclass_single_tensor_model_named_from_a_csv_header(
    cli_env: None, lab_stack: Lab, tmp_path: Path
) -> None:
    model_path, rows_path = users_iris_classifier(tmp_path)
    publish(model_path, "--features-from", rows_path, "--no-mlflow")
    header, matrix = read_rows(rows_path)
    labels, probabilities = ort_outputs(model_path, matrix)
    result = jobs.predict_file(
        lab_stack.settings, lab_stack.aws, rows_path, key="byom/iris.csv", out_dir=tmp_path / "o"
    )
    assert (result.status, result.model) == ("ok", "iris")
    scored = list(csv.DictReader(result.local_path.open(newline="")))
    assert list(scored[0]) == [*header, "prediction", "probability_0", "probability_1", "probability_2"]
    assert [row["prediction"] for row in scored] == [str(label) for label in labels]
    got = np.array([[float(row[f"probability_{c}"]) for c in range(3)] for row in scored])
    np.testing.assert_allclose(got, [[p[c] for c in range(3)] for p in probabilities], atol=1e-6)


def test_a_scikit_learn_model_logged_to_mlflow_is_published_by_its_uri(with_mlflow: Lab, tmp_path: Path) -> None:
    import mlflow
    import mlflow.sklearn
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    settings, aws = with_mlflow.settings, with_mlflow.aws
    data = load_wine(as_frame=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(data.data, data.target)
    registry.client(settings)
    mlflow.set_experiment("a-notebook")
    with mlflow.start_run():
        logged = mlflow.sklearn.log_model(
            pipeline, name="model", input_example=data.data.head(5), registered_model_name="wine-notebook"
        )
    uri = f"models:/wine-notebook/{logged.registered_model_version}"
    output = publish(uri)
    assert "ONNX agrees with scikit-learn" in output, output
    assert model.live_name(settings, aws) == "wine-notebook"
    versions = {row.version: row for row in registry.list_versions(settings, aws, name="wine-notebook")}
    live = model.live_version(settings, aws)
    assert live != logged.registered_model_version and versions[str(live)].live  # the ONNX copy, a new version

    rows_path = tmp_path / "wine.csv"
    data.data.head(30).to_csv(rows_path, index=False)
    result = jobs.predict_file(settings, aws, rows_path, key="byom/wine.csv", out_dir=tmp_path)
    scored = list(csv.DictReader(result.local_path.open(newline="")))
    assert [row["prediction"] for row in scored] == [str(label) for label in pipeline.predict(data.data.head(30))]


def test_a_refused_model_leaves_the_live_one_alone(cli_env: None, lab_stack: Lab, tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    settings = lab_stack.settings
    before = lab_stack.s3().head_object(Bucket=settings.model_bucket, Key=settings.model_key)["ETag"]
    image = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["image"], ["out"])],
            "g",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 64, 64])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 3, 64, 64])],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    (tmp_path / "resnet.onnx").write_bytes(image.SerializeToString())
    model_path, _ = users_iris_classifier(tmp_path)
    for arguments, says in (
        ([tmp_path / "resnet.onnx"], "an image or sequence model"),
        ([model_path, "--features", "a,b,c"], "cannot be mapped"),
        ([tmp_path / "missing.onnx"], "no such file"),
    ):
        result = runner.invoke(app, ["publish", *map(str, arguments), "--no-mlflow"])
        assert result.exit_code == 1 and "Refused" in result.output and says in result.output, result.output
    after = lab_stack.s3().head_object(Bucket=settings.model_bucket, Key=settings.model_key)["ETag"]
    assert after == before


def test_promote_switches_back_to_the_demo_model(with_mlflow: Lab, tmp_path: Path) -> None:
    settings, aws = with_mlflow.settings, with_mlflow.aws
    demo = training.train_and_log(settings, rows=3000, seed=5, run_name="byom-demo")
    model_path, rows_path = users_iris_classifier(tmp_path)
    publish(model_path, "--features-from", rows_path)
    assert model.live_name(settings, aws) == "iris"
    listed = runner.invoke(app, ["models"])  # the live model's versions by default
    assert listed.exit_code == 0 and "iris" in listed.output, listed.output

    back = runner.invoke(app, ["promote", demo.version, "--name", settings.model_name])
    assert back.exit_code == 0, back.output
    assert (model.live_name(settings, aws), model.live_version(settings, aws)) == (settings.model_name, demo.version)
    assert "was iris" in back.output, back.output


def test_the_promote_command_train_prints_works_while_another_model_is_live(with_mlflow: Lab, tmp_path: Path) -> None:
    """`train` ends with the command that serves its version; with another model live (iris), that command as printed
    (not a bare `promote N`, which would look for version N of iris) makes the trained version live."""
    settings, aws = with_mlflow.settings, with_mlflow.aws
    model_path, rows_path = users_iris_classifier(tmp_path)
    publish(model_path, "--features-from", rows_path)
    assert model.live_name(settings, aws) == "iris"
    trained = runner.invoke(app, ["train", "--rows", "2000", "--seed", "8", "--mlflow", "--no-publish"])
    assert trained.exit_code == 0, trained.output
    hint = re.search(r"Serve it with (mlops-lab promote .+)$", trained.output, flags=re.M)
    assert hint, trained.output
    command = shlex.split(hint.group(1))[1:]
    assert command[:1] == ["promote"] and "--name" in command, command
    promoted = runner.invoke(app, command)
    assert promoted.exit_code == 0, promoted.output
    version = command[1]
    assert (model.live_name(settings, aws), model.live_version(settings, aws)) == (settings.model_name, version)


def test_every_command_that_talks_to_aws_says_where_first(with_mlflow: Lab) -> None:
    """One line on stderr before anything else: the endpoint, region and account the command's calls go to."""
    for command in (["jobs"], ["failures"], ["models"], ["plan"], ["reconcile", "--dry-run"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
        first = result.output.splitlines()[0]
        assert first.startswith(f"Talking to emulator at {with_mlflow.settings.emulator_url}"), (command, first)
        assert "account 000000000000" in first, (command, first)
