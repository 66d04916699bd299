"""Batch jobs as listed from the buckets (mlops_lab.jobs), shared by `mlops-lab jobs` and the console."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlops_lab import jobs
from mlops_lab.cli import app
from mlops_lab.contract import META_MODEL_KIND, META_MODEL_NAME, META_MODEL_VERSION, error_key, prediction_key
from mlops_lab.inference import REGRESSOR
from tests.support import Lab, wait_for_output, wait_until

runner = CliRunner()


def test_label_counts_of_a_classifier() -> None:
    text = "age,prediction\n1,a\n2,b\n3,a\n"
    read = jobs.read_predictions(io.StringIO(text), {META_MODEL_NAME: "m", META_MODEL_VERSION: "3"})
    distribution = read.distribution
    assert distribution.kind == "labels" and [(b.label, b.count) for b in distribution.bars] == [("a", 2), ("b", 1)]
    assert read.label_counts == {"a": 2, "b": 1} and read.value_range is None and read.rows == 3


def test_a_histogram_of_a_regressor() -> None:
    text = "x,prediction\n" + "".join(f"{i},{i}.0\n" for i in range(100))
    read = jobs.read_predictions(io.StringIO(text), {META_MODEL_KIND: REGRESSOR})
    distribution = read.distribution
    assert distribution.kind == "histogram" and len(distribution.bars) == jobs.HISTOGRAM_BINS
    assert distribution.total == 100
    assert read.label_counts is None and read.value_range == (0.0, 99.0)


@pytest.mark.parametrize("key", ["a.txt", "../up.csv", "x y.csv", "/", "a/../b.csv"])
def test_keys_the_function_would_not_take_are_refused(key: str) -> None:
    with pytest.raises(jobs.UploadRefused):
        jobs.check_key(key)


def test_jobs_lists_predictions_and_rejections_newest_first(cli_env: None, lab_stack: Lab, sample_csv: Path) -> None:
    settings, s3 = lab_stack.settings, lab_stack.s3()
    with sample_csv.open("rb") as body:
        jobs.submit(settings, lab_stack.aws, body, "jobs/good.csv")
    wait_for_output(lab_stack, prediction_key("jobs/good.csv"))
    uploaded = s3.head_object(Bucket=settings.input_bucket, Key="jobs/good.csv")["LastModified"]
    # S3 times have whole seconds: the second upload goes in a later one, so "newest first" is well defined.
    wait_until(lambda: datetime.now(UTC) - uploaded > timedelta(seconds=1.1), timeout=5, interval=0.05)
    jobs.submit(settings, lab_stack.aws, io.BytesIO(b"age,sex\n39,Male\n"), "jobs/bad.csv")
    wait_for_output(lab_stack, error_key("jobs/bad.csv"))
    s3.put_object(Bucket=settings.input_bucket, Key="jobs/notes.txt", Body=b"not a job")

    result = runner.invoke(app, ["jobs", "--json", "--limit", "100"])
    assert result.exit_code == 0, result.output
    listed = {job["key"]: job for job in json.loads(result.stdout)}
    assert "jobs/notes.txt" not in listed
    good, bad = listed["jobs/good.csv"], listed["jobs/bad.csv"]
    assert good["status"] == "ok" and good["rows"] == 500 and good["distribution"]["kind"] == "labels"
    assert sum(bar["count"] for bar in good["distribution"]["bars"]) == 500
    assert bad["status"] == "rejected" and "missing columns" in bad["reason"]
    order = list(listed)
    assert order.index("jobs/bad.csv") < order.index("jobs/good.csv")  # newest first
    table = runner.invoke(app, ["jobs"])
    assert table.exit_code == 0 and "jobs/good.csv" in table.output, table.output


def test_predict_json(cli_env: None, sample_csv: Path, tmp_path: Path) -> None:
    good = runner.invoke(app, ["predict", str(sample_csv), "--key", "jobs/json.csv", "--json", "--timeout", "120"])
    assert good.exit_code == 0, good.output
    result = json.loads(good.stdout)
    assert result["status"] == "ok" and result["rows"] == 500 and sum(result["label_counts"].values()) == 500
    bad = tmp_path / "bad.csv"
    bad.write_text("age,sex\n39,Male\n")
    rejected = runner.invoke(app, ["predict", str(bad), "--key", "jobs/json-bad.csv", "--json", "--timeout", "120"])
    assert rejected.exit_code == 1, rejected.output
    report = json.loads(rejected.stdout)
    assert report["status"] == "rejected" and "missing columns" in report["error"]["reason"]
