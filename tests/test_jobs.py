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


def wait_past_the_second_of(lab: Lab, key: str) -> None:
    """Until ``key`` was uploaded over a second ago: S3 times have whole seconds, the next upload gets a later one."""
    uploaded = lab.s3().head_object(Bucket=lab.settings.input_bucket, Key=key)["LastModified"]
    wait_until(lambda: datetime.now(UTC) - uploaded > timedelta(seconds=1.1), timeout=5, interval=0.05)


def test_jobs_lists_predictions_and_rejections_newest_first(cli_env: None, lab_stack: Lab, sample_csv: Path) -> None:
    settings, s3 = lab_stack.settings, lab_stack.s3()
    # Uploaded in an order that is neither the keys' order nor its reverse, each in a later second than the one
    # before: only ordering by upload time lists them newest first.
    uploads = [
        ("newest/b-good.csv", sample_csv.read_bytes(), prediction_key),
        ("newest/c-bad.csv", b"age,sex\n39,Male\n", error_key),
        ("newest/a-good.csv", sample_csv.read_bytes(), prediction_key),
    ]
    for key, body, output_key in uploads:
        jobs.submit(settings, lab_stack.aws, io.BytesIO(body), key)
        wait_for_output(lab_stack, output_key(key))
        wait_past_the_second_of(lab_stack, key)
    s3.put_object(Bucket=settings.input_bucket, Key="newest/notes.txt", Body=b"not a job")

    result = runner.invoke(app, ["jobs", "--json", "--limit", "100"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    by_key = {job["key"]: job for job in listed}
    assert "newest/notes.txt" not in by_key
    assert [job["key"] for job in listed if job["key"].startswith("newest/")] == [
        "newest/a-good.csv",
        "newest/c-bad.csv",
        "newest/b-good.csv",
    ]
    times = [job["uploaded"] for job in listed]
    assert times == sorted(times, reverse=True), "every job, not only these, newest first"
    good, bad = by_key["newest/a-good.csv"], by_key["newest/c-bad.csv"]
    assert good["status"] == "ok" and good["rows"] == 500 and good["distribution"]["kind"] == "labels"
    assert sum(bar["count"] for bar in good["distribution"]["bars"]) == 500
    assert bad["status"] == "rejected" and "missing columns" in bad["reason"]
    table = runner.invoke(app, ["jobs"])
    assert table.exit_code == 0 and "newest/a-good.csv" in table.output, table.output


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
