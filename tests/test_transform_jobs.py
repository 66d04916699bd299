"""Batch Transform jobs on the lab's SageMaker, through boto3 unchanged, checked against outputs built independently
from AWS's documented rules (one `<input>.out` per input object, records in order, no `.out` for a failed file)."""

from __future__ import annotations

import gzip
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError, WaiterError

from mlops_lab import sagemaker
from mlops_lab.inference import TabularModel
from mlops_lab.sagemaker import batch_transform
from mlops_lab.synthetic import generate
from tests.model_zoo import lab_classifier
from tests.support import Lab, error_code, isolated_environment, running_lab, wait_until
from tests.test_sagemaker_server import model_tarball

ROLE = "arn:aws:iam::000000000000:role/lab-test-sagemaker"
MODEL = "transform-model"


@pytest.fixture(scope="module")
def lab(lab_stack: Lab) -> Iterator[Lab]:
    with running_lab(lab_stack.settings, [sagemaker.SERVICE_NAME]) as running:
        yield running


@pytest.fixture(scope="module")
def sm(lab: Lab):  # type: ignore[no-untyped-def]
    client = boto3.client("sagemaker", endpoint_url=lab.settings.sagemaker_emulator_url, region_name=lab.aws.region)
    return batch_transform.keep_lab_progress(client)


@pytest.fixture(scope="module")
def model_path(lab: Lab, sm, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    path = lab_classifier(tmp_path_factory.mktemp("transform") / "model.onnx", rows=2000, seed=8)
    key = "transform-tests/model.tar.gz"
    lab.aws.client("s3").put_object(Bucket=lab.settings.model_bucket, Key=key, Body=model_tarball(path))
    sm.create_model(
        ModelName=MODEL,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": "lab", "ModelDataUrl": f"s3://{lab.settings.model_bucket}/{key}"},
    )
    return path


def put(lab: Lab, key: str, body: bytes) -> str:
    lab.aws.client("s3").put_object(Bucket=lab.settings.input_bucket, Key=key, Body=body)
    return f"s3://{lab.settings.input_bucket}/{key}"


def read(lab: Lab, key: str) -> bytes | None:
    try:
        return lab.aws.client("s3").get_object(Bucket=lab.settings.output_bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404"):
            return None
        raise


def run(sm, name: str, **request) -> dict:  # type: ignore[no-untyped-def]
    request.setdefault("ModelName", MODEL)
    request.setdefault("TransformResources", {"InstanceType": "ml.m5.large", "InstanceCount": 1})
    sm.create_transform_job(TransformJobName=name, **request)
    assert sm.describe_transform_job(TransformJobName=name)["TransformJobStatus"] == "InProgress"
    return finished(sm, name)


def start_single_record_job(lab: Lab, sm, name: str, folder: str, *, instances: int = 1) -> None:  # type: ignore[no-untyped-def]
    """A SingleRecord job (slow enough to act on while it runs) over ``folder``/in/, writing to ``folder``/out."""
    sm.create_transform_job(
        TransformJobName=name,
        ModelName=MODEL,
        TransformInput=csv_input(f"s3://{lab.settings.input_bucket}/{folder}/in/"),
        TransformOutput={"S3OutputPath": f"s3://{lab.settings.output_bucket}/{folder}/out", "AssembleWith": "Line"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": instances},
        BatchStrategy="SingleRecord",
    )


def finished(sm, name: str) -> dict:  # type: ignore[no-untyped-def]
    """The job once it ended, as boto3's own waiter sees it end (Failed is an end too: the waiter raises on it)."""
    try:
        sm.get_waiter("transform_job_completed_or_stopped").wait(
            TransformJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 240}
        )
    except WaiterError as error:
        if "Failed" not in str(error):
            raise
    return sm.describe_transform_job(TransformJobName=name)


def rows_csv(n: int, seed: int) -> tuple[bytes, list[str]]:
    """n headerless CSV records and the model's labels for them (the inference core, in this process)."""
    frame = generate(n, seed=seed, with_label=False)
    return frame.to_csv(index=False, header=False).encode(), frame.to_dict(orient="records")


def labels(model_path: Path, records: list[dict]) -> list[str]:
    return TabularModel(model_path).predict_records(records).label_texts()


def csv_input(prefix: str, *, split: str = "Line", **extra) -> dict:  # type: ignore[no-untyped-def]
    return {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": prefix}},
        "ContentType": "text/csv",
        "SplitType": split,
        **extra,
    }


def test_every_file_gets_its_out_in_record_order(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    first, first_records = rows_csv(700, seed=1)
    second, second_records = rows_csv(300, seed=2)
    put(lab, "t1/in/a.csv", first)
    put(lab, "t1/in/nested/b.csv", second)
    job = run(
        sm,
        "t1-files",
        TransformInput=csv_input(f"s3://{lab.settings.input_bucket}/t1/in/"),
        TransformOutput={
            "S3OutputPath": f"s3://{lab.settings.output_bucket}/t1/out",
            "Accept": "text/csv",
            "AssembleWith": "Line",
        },
        BatchStrategy="MultiRecord",
        MaxPayloadInMB=1,
        MaxConcurrentTransforms=2,
    )
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    for key, records in (("t1/out/a.csv.out", first_records), ("t1/out/nested/b.csv.out", second_records)):
        lines = read(lab, key).decode().splitlines()
        assert [line.split(",")[0] for line in lines] == labels(model_path, records)


def test_join_source_input_with_filters(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An id column the model must not see: InputFilter drops it, JoinSource=Input joins the answer to the whole
    input, OutputFilter keeps the id and the prediction (AWS's own example of this, on the lab's model)."""
    body, records = rows_csv(50, seed=3)
    with_ids = b"".join(f"id-{n},".encode() + line + b"\n" for n, line in enumerate(body.splitlines()))
    put(lab, "t2/in/ids.csv", with_ids)
    columns = len(body.splitlines()[0].split(b","))
    job = run(
        sm,
        "t2-join",
        TransformInput=csv_input(f"s3://{lab.settings.input_bucket}/t2/in/"),
        TransformOutput={"S3OutputPath": f"s3://{lab.settings.output_bucket}/t2/out", "AssembleWith": "Line"},
        DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": f"$[0,{columns + 1}]"},
    )
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    expected = [f"id-{n},{label}" for n, label in enumerate(labels(model_path, records))]
    assert read(lab, "t2/out/ids.csv.out").decode().splitlines() == expected


def test_json_lines_in_and_out_gzipped(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    frame = generate(40, seed=4, with_label=False)
    records = frame.to_dict(orient="records")
    body = gzip.compress("".join(json.dumps(record) + "\n" for record in records).encode())
    put(lab, "t3/in/part.jsonl.gz", body)
    job = run(
        sm,
        "t3-jsonl",
        TransformInput={
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{lab.settings.input_bucket}/t3/in"}
            },
            "ContentType": "application/jsonlines",
            "SplitType": "Line",
            "CompressionType": "Gzip",
        },
        TransformOutput={
            "S3OutputPath": f"s3://{lab.settings.output_bucket}/t3/out/",
            "Accept": "application/jsonlines",
            "AssembleWith": "Line",
        },
        BatchStrategy="SingleRecord",
    )
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    # A prefix that ends in a partial name ("t3/in", no slash): the path below its folder ("in/...") is kept.
    answers = [json.loads(line) for line in read(lab, "t3/out/in/part.jsonl.gz.out").decode().splitlines()]
    assert [str(answer["prediction"]) for answer in answers] == labels(model_path, records)


def test_a_bad_record_fails_its_file_only(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    good, good_records = rows_csv(30, seed=5)
    bad_lines = rows_csv(30, seed=6)[0].splitlines()
    bad_lines[17] = b"this,is,not,a,record"
    put(lab, "t4/in/good.csv", good)
    put(lab, "t4/in/bad.csv", b"\n".join(bad_lines) + b"\n")
    job = run(
        sm,
        "t4-bad-record",
        TransformInput=csv_input(f"s3://{lab.settings.input_bucket}/t4/in/"),
        TransformOutput={"S3OutputPath": f"s3://{lab.settings.output_bucket}/t4/out", "AssembleWith": "Line"},
        BatchStrategy="SingleRecord",
    )
    assert job["TransformJobStatus"] == "Failed"
    assert "bad.csv" in job["FailureReason"] and "record 18" in job["FailureReason"]
    assert read(lab, "t4/out/bad.csv.out") is None
    assert [line.split(",")[0] for line in read(lab, "t4/out/good.csv.out").decode().splitlines()] == labels(
        model_path, good_records
    )


def test_a_record_over_the_payload_limit_is_refused(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    put(lab, "t5/in/huge.csv", b"x" * (1024 * 1024 + 10) + b"\n")
    job = run(
        sm,
        "t5-too-large",
        TransformInput=csv_input(f"s3://{lab.settings.input_bucket}/t5/in/"),
        TransformOutput={"S3OutputPath": f"s3://{lab.settings.output_bucket}/t5/out"},
        MaxPayloadInMB=1,
    )
    assert job["TransformJobStatus"] == "Failed"
    assert "huge.csv" in job["FailureReason"] and "record 1" in job["FailureReason"]
    assert read(lab, "t5/out/huge.csv.out") is None


def test_bad_parameters_are_aws_s_validation_errors(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as refused:
        sm.create_transform_job(
            TransformJobName="t6-bad",
            ModelName=MODEL,
            TransformInput=csv_input(f"s3://{lab.settings.input_bucket}/t6/", split="None"),
            TransformOutput={"S3OutputPath": f"s3://{lab.settings.output_bucket}/t6/out"},
            TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
            DataProcessing={"JoinSource": "Input"},
        )
    assert error_code(refused.value) == "ValidationException"
    with pytest.raises(ClientError) as unknown:
        sm.describe_transform_job(TransformJobName="never-made")
    assert error_code(unknown.value) == "ValidationException"


def test_stop_mid_run_ends_stopped_without_half_outputs(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    body, _ = rows_csv(4000, seed=7)
    for n in range(3):
        put(lab, f"t7/in/part-{n}.csv", body)
    name = "t7-stop"
    start_single_record_job(lab, sm, name, "t7")
    wait_until(lambda: _scored(sm, name) > 0, timeout=60)
    sm.stop_transform_job(TransformJobName=name)
    assert sm.describe_transform_job(TransformJobName=name)["TransformJobStatus"] in ("Stopping", "Stopped")
    sm.get_waiter("transform_job_completed_or_stopped").wait(
        TransformJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    assert sm.describe_transform_job(TransformJobName=name)["TransformJobStatus"] == "Stopped"
    outputs = [read(lab, f"t7/out/part-{n}.csv.out") for n in range(3)]
    for output in outputs:  # an .out, if any, is whole: 4000 lines
        assert output is None or len(output.decode().splitlines()) == 4000


def test_a_worker_killed_mid_job_does_not_leave_half_an_output(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two instances; one is killed while the job runs: its mini-batches are retried on the other (within
    InvocationsMaxRetries), and every .out is whole and right."""
    body, records = rows_csv(3000, seed=9)
    for n in range(2):
        put(lab, f"t8/in/part-{n}.csv", body)
    name = "t8-crash"
    start_single_record_job(lab, sm, name, "t8", instances=2)
    workers: list[int] = []

    def worker_started() -> bool:
        workers[:] = _pids_with(str(lab.settings.state_dir), "mlops_lab.api")
        return len(workers) >= 2 and _scored(sm, name) > 50

    wait_until(worker_started, timeout=60)
    os.kill(workers[-1], signal.SIGKILL)
    job = finished(sm, name)
    assert not Path(f"/proc/{workers[-1]}").exists() or b"(Z)" in Path(f"/proc/{workers[-1]}/stat").read_bytes()[:64]
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    expected = labels(model_path, records)
    for n in range(2):
        lines = read(lab, f"t8/out/part-{n}.csv.out").decode().splitlines()
        assert [line.split(",")[0] for line in lines] == expected


def _scored(sm, name: str) -> int:  # type: ignore[no-untyped-def]
    """Records scored so far: the lab's progress field (which boto3 would drop: batch_transform keeps it)."""
    return sm.describe_transform_job(TransformJobName=name)["LabProgress"]["RecordsScored"]


def _pids_with(*needles: str) -> list[int]:
    """The processes whose command line holds every needle, oldest pid first."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(needle in command for needle in needles):
                found.append(int(entry.name))
    return sorted(found)


def test_jobs_are_listed_newest_first(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    summaries = sm.list_transform_jobs(MaxResults=100)["TransformJobSummaries"]
    times = [summary["CreationTime"] for summary in summaries]
    assert len(times) >= 2 and times == sorted(times, reverse=True)
    completed = sm.list_transform_jobs(StatusEquals="Completed", MaxResults=100)["TransformJobSummaries"]
    assert completed and all(summary["TransformJobStatus"] == "Completed" for summary in completed)
    first_page = sm.list_transform_jobs(MaxResults=1)
    assert len(first_page["TransformJobSummaries"]) == 1 and first_page["NextToken"]


def test_the_cli_runs_a_job_and_says_how_it_ended(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from mlops_lab.cli import app

    body, records = rows_csv(200, seed=14)
    put(lab, "t9/in/rows.csv", body)
    put(lab, "t9/bad/rows.csv", b"not,a,record\n")
    runner = CliRunner()
    bucket_in, bucket_out = lab.settings.input_bucket, lab.settings.output_bucket
    with isolated_environment(lab.settings):
        done = runner.invoke(
            app,
            [
                *("transform", f"s3://{bucket_in}/t9/in/", f"s3://{bucket_out}/t9/out", "--model", MODEL),
                *("--wait", "--instances", "2", "--name", "t9-cli"),
            ],
        )
        assert done.exit_code == 0, done.output
        said = " ".join(done.output.split())
        assert "t9-cli: Completed (1/1 files done, 0 failed, 200 records scored)" in said
        failed = runner.invoke(
            app, ["transform", f"s3://{bucket_in}/t9/bad/", f"s3://{bucket_out}/t9/bad-out", "--model", MODEL, "--wait"]
        )
        assert failed.exit_code == 12, failed.output
        assert "rows.csv" in failed.output and "record 1" in failed.output
        status = runner.invoke(app, ["transform-status", "t9-cli", "--json"])
        assert status.exit_code == 0 and json.loads(status.stdout)["TransformJobStatus"] == "Completed"
    lines = read(lab, "t9/out/rows.csv.out").decode().splitlines()
    assert [line.split(",")[0] for line in lines] == labels(model_path, records)


def test_a_manifest_whole_files_and_no_assembly(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ManifestFile lists the inputs; SplitType None sends each file as one request; AssembleWith None writes the
    container's answer as it is (its own line ends, nothing added)."""
    first, first_records = rows_csv(3, seed=15)
    second, second_records = rows_csv(4, seed=16)
    put(lab, "t10/data/x/one.csv", first)
    put(lab, "t10/data/two.csv", second)
    put(lab, "t10/data/unlisted.csv", first)
    manifest = json.dumps([{"prefix": f"s3://{lab.settings.input_bucket}/t10/data/"}, "x/one.csv", "two.csv"])
    manifest_uri = put(lab, "t10/inputs.manifest", manifest.encode())
    job = run(
        sm,
        "t10-manifest",
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": manifest_uri}},
            "ContentType": "text/csv",
            "SplitType": "None",
        },
        TransformOutput={"S3OutputPath": f"s3://{lab.settings.output_bucket}/t10/out", "AssembleWith": "None"},
    )
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    for key, records in (("t10/out/x/one.csv.out", first_records), ("t10/out/two.csv.out", second_records)):
        expected = "".join(f"{label}," for label in labels(model_path, records))  # only the labels are compared
        answer = read(lab, key).decode()
        assert answer.endswith("\n") and not answer.endswith("\n\n")  # the container's own line end, nothing added
        assert "".join(line.split(",")[0] + "," for line in answer.splitlines()) == expected
    assert read(lab, "t10/out/unlisted.csv.out") is None


def test_jobs_outlive_a_restart_and_an_interrupted_one_ends_failed(lab: Lab, sm, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`down`/`up` keeps the jobs' records (moto's own records are in memory: models go). A job the restart cut
    short ends Failed, saying why, never Completed, and leaves no .out. (Last in the module: the restart forgets the
    model.)"""
    from mlops_lab import stack

    body, _ = rows_csv(4000, seed=17)
    put(lab, "t11/in/rows.csv", body)
    start_single_record_job(lab, sm, "t11-cut-short", "t11")
    wait_until(lambda: _scored(sm, "t11-cut-short") > 0, timeout=60)
    before = {job["TransformJobName"]: job["TransformJobStatus"] for job in _all_jobs(sm)}
    service = sagemaker.emulator_service(lab.settings, {})
    stack.stop(lab.settings, service)
    stack.start(lab.settings, service)
    after = {job["TransformJobName"]: job["TransformJobStatus"] for job in _all_jobs(sm)}
    assert after == before | {"t11-cut-short": "Failed"}
    cut = sm.describe_transform_job(TransformJobName="t11-cut-short")
    # Failed, never Completed: "stopped during the job", or, when `down` stopped its workers (the same process
    # group) a moment before the server, their not answering.
    assert cut["TransformJobStatus"] == "Failed" and cut["FailureReason"], cut
    assert read(lab, "t11/out/rows.csv.out") is None


def _all_jobs(sm) -> list[dict]:  # type: ignore[no-untyped-def]
    return [job for page in sm.get_paginator("list_transform_jobs").paginate() for job in page["TransformJobSummaries"]]
