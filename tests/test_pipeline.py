"""The whole batch path on a real emulator: upload -> S3 notification -> Lambda (layer) -> output bucket."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from mlops_lab import jobs, model
from mlops_lab.batch_spec import execution_policy
from mlops_lab.bootstrap import bootstrap, build_lambda_layer, run_bootstrap
from mlops_lab.contract import META_ROWS, error_key, prediction_key
from mlops_lab.data import FEATURES
from mlops_lab.inference import PREDICTION_COLUMN, TabularModel, probability_column, score_csv
from mlops_lab.settings import Settings
from mlops_lab.synthetic import generate
from mlops_lab.teardown import teardown
from tests.support import NOT_FOUND_CODES, Lab, error_code, free_port, read_output, wait_for_output


def scored_here(model_path: Path, csv_path: Path, *, chunk_rows: int = 8192) -> bytes:
    """The core's own output for ``csv_path``, computed in this process: what the Lambda must write."""
    sink = io.StringIO()
    with csv_path.open(newline="", encoding="utf-8") as source:
        score_csv(TabularModel(model_path), source, sink, chunk_rows=chunk_rows)
    return sink.getvalue().encode()


def assert_absent(s3, bucket: str, key: str) -> None:  # type: ignore[no-untyped-def]
    """``key`` is not in ``bucket``: S3 answers not-found (any other error, a 500 or a 403, is not that answer)."""
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=bucket, Key=key)
    assert error_code(caught.value) in NOT_FOUND_CODES, caught.value.response


def test_upload_produces_predictions(
    lab_stack: Lab, sample_csv: Path, trained_model_path: Path, tmp_path: Path
) -> None:
    result = jobs.predict_file(
        lab_stack.settings, lab_stack.aws, sample_csv, key="pipeline/sample.csv", out_dir=tmp_path
    )
    assert result.status == "ok"
    assert result.rows == 500
    classes = TabularModel(trained_model_path).classes
    with result.local_path.open(newline="") as output:
        header = next(csv.reader(output))
    assert header == [*FEATURES, PREDICTION_COLUMN, *map(probability_column, classes)]
    assert result.local_path.read_bytes() == scored_here(trained_model_path, sample_csv)


def test_multi_chunk_file_through_the_lambda(lab_stack: Lab, trained_model_path: Path, tmp_path: Path) -> None:
    """A file of more rows than the function's CHUNK_ROWS (so scored in several chunks by the deployed function)
    comes out exactly as scoring it here in one chunk: no row lost, repeated or paired with another's prediction."""
    settings, aws = lab_stack.settings, lab_stack.aws
    environment = aws.client("lambda").get_function_configuration(FunctionName=settings.function_name)["Environment"]
    chunk_rows = int(environment["Variables"]["CHUNK_ROWS"])
    rows = 2 * chunk_rows + 101 if chunk_rows < 4000 else chunk_rows + 1001
    path = tmp_path / "multi-chunk.csv"
    generate(rows, seed=29, with_label=False).to_csv(path, index=False)
    assert path.stat().st_size < settings.max_input_mb * 1024 * 1024, "the file must stay under the input limit"
    result = jobs.predict_file(settings, aws, path, key="pipeline/multi-chunk.csv", out_dir=tmp_path / "out")
    assert result.status == "ok", result.error
    assert result.rows == rows
    assert result.local_path.read_bytes() == scored_here(trained_model_path, path, chunk_rows=rows + 1)


def test_course_batch_through_the_lambda(
    lab_stack: Lab, course_batch_path: Path, trained_model_path: Path, tmp_path: Path
) -> None:
    """The course's 10,090 real rows (more than one chunk), scored by the deployed function with the lab's model."""
    result = jobs.predict_file(
        lab_stack.settings, lab_stack.aws, course_batch_path, key="course/input_batch.csv", out_dir=tmp_path
    )
    assert result.status == "ok", result.error
    assert result.rows == 10090
    assert sum(result.label_counts.values()) == 10090
    assert 0.05 < result.label_counts[">50K"] / 10090 < 0.5
    assert result.local_path.read_bytes() == scored_here(trained_model_path, course_batch_path, chunk_rows=20000)


def test_keys_with_spaces_and_folders(lab_stack: Lab, sample_csv: Path) -> None:
    key = "folder one/März batch (1).csv"
    lab_stack.s3().upload_file(str(sample_csv), lab_stack.settings.input_bucket, key)
    head = wait_for_output(lab_stack, prediction_key(key))
    assert head["Metadata"][META_ROWS] == "500"


def test_non_csv_keys_do_not_trigger(lab_stack: Lab, sample_csv: Path) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    s3.upload_file(str(sample_csv), settings.input_bucket, "notes/readme.txt")
    s3.upload_file(str(sample_csv), settings.input_bucket, "notes/marker.csv")
    wait_for_output(lab_stack, prediction_key("notes/marker.csv"))  # a later .csv was processed ...
    assert_absent(s3, settings.output_bucket, prediction_key("notes/readme.txt"))  # ... and the .txt never was
    assert_absent(s3, settings.output_bucket, error_key("notes/readme.txt"))


# -- bad input: an error report, no predictions, the input untouched --------------------------------------------

HEADER = "age,work_class,education,marital_status,occupation,relationship,race,sex,capital_gain,capital_loss,hours_per_week,native_country"
GOOD = "39,Private,Bachelors,Married,Professional,Husband,White,Male,0,0,40,United-States"

BAD_INPUTS = {
    "empty.csv": (b"", "empty file"),
    "header-only.csv": (f"{HEADER}\n".encode(), "header only"),
    "missing-column.csv": (b"age,work_class\n39,Private\n", "missing columns"),
    "extra-column.csv": (f"{HEADER},income\n{GOOD},>50K\n".encode(), "unexpected columns: income"),
    "wrong-type.csv": (f"{HEADER}\n{GOOD}\n{GOOD.replace('39', 'forty', 1)}\n".encode(), "'age' expects a number"),
    "latin1.csv": (f"{HEADER}\n{GOOD.replace('Private', 'Privé')}\n".encode("latin-1"), "not UTF-8"),
    "ragged.csv": (f"{HEADER}\n{GOOD}\n39,Private\n".encode(), "ragged rows"),
    "unknown-category.csv": (f"{HEADER}\n{GOOD.replace('Private', 'Astronaut')}\n".encode(), "unknown categories"),
    "image.csv": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10", "not UTF-8"),
    "json.csv": (b'{"age": 39, "sex": "Male"}', "missing columns"),
}


@pytest.fixture(scope="module")
def bad_uploads(lab_stack: Lab) -> dict[str, str]:
    """Upload every bad file at once; returns key -> the input's ETag at upload."""
    s3 = lab_stack.s3()
    etags = {}
    for name, (body, _) in BAD_INPUTS.items():
        etags[f"bad/{name}"] = s3.put_object(Bucket=lab_stack.settings.input_bucket, Key=f"bad/{name}", Body=body)[
            "ETag"
        ]
    oversized = generate(30000, seed=5, with_label=False).to_csv(index=False).encode()
    assert len(oversized) > lab_stack.settings.max_input_mb * 1024 * 1024
    etags["bad/oversized.csv"] = s3.put_object(
        Bucket=lab_stack.settings.input_bucket, Key="bad/oversized.csv", Body=oversized
    )["ETag"]
    return etags


@pytest.mark.parametrize("name", [*BAD_INPUTS, "oversized.csv"])
def test_bad_input_gets_an_error_report(lab_stack: Lab, bad_uploads: dict[str, str], name: str) -> None:
    key = f"bad/{name}"
    wait_for_output(lab_stack, error_key(key))
    report = json.loads(read_output(lab_stack, error_key(key)))
    expected = "file too large" if name == "oversized.csv" else BAD_INPUTS[name][1]
    assert expected in report["reason"]
    assert report["input"] == f"s3://{lab_stack.settings.input_bucket}/{key}"
    s3 = lab_stack.s3()
    assert_absent(s3, lab_stack.settings.output_bucket, prediction_key(key))
    # The input is untouched.
    assert s3.head_object(Bucket=lab_stack.settings.input_bucket, Key=key)["ETag"] == bad_uploads[key]


def test_error_report_names_rows_and_columns(lab_stack: Lab, bad_uploads: dict[str, str]) -> None:
    wait_for_output(lab_stack, error_key("bad/wrong-type.csv"))
    report = json.loads(read_output(lab_stack, error_key("bad/wrong-type.csv")))
    assert report["columns"] == ["age"]
    assert report["rows"] == [{"row": 3, "column": "age", "value": "forty"}]


# -- redelivery, concurrency -------------------------------------------------------------------------------------


def test_redelivered_event_overwrites_instead_of_duplicating(lab_stack: Lab, sample_csv: Path) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    key = "redelivery/batch.csv"
    s3.upload_file(str(sample_csv), settings.input_bucket, key)
    wait_for_output(lab_stack, prediction_key(key))
    first = read_output(lab_stack, prediction_key(key))
    # Deliver the same event again, as S3 may: invoke the function directly with an identical record.
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": settings.input_bucket}, "object": {"key": key}},
            }
        ]
    }
    response = lab_stack.aws.client("lambda").invoke(FunctionName=settings.function_name, Payload=json.dumps(event))
    payload = response["Payload"].read()
    assert "FunctionError" not in response, payload
    (answer,) = json.loads(payload)["results"]  # the redelivered record was scored again ...
    assert (answer["status"], answer["output"]) == ("ok", f"s3://{settings.output_bucket}/{prediction_key(key)}")
    listing = s3.list_objects_v2(Bucket=settings.output_bucket, Prefix=prediction_key("redelivery/"))
    assert [item["Key"] for item in listing["Contents"]] == [prediction_key(key)]  # ... into the same object
    assert read_output(lab_stack, prediction_key(key)) == first


def test_fifty_concurrent_uploads_none_lost(lab_stack: Lab, tmp_path: Path) -> None:
    s3, settings = lab_stack.s3(), lab_stack.settings
    body = generate(200, seed=21, with_label=False).to_csv(index=False).encode()
    keys = [f"burst/{i:02d}.csv" for i in range(50)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=settings.input_bucket, Key=k, Body=body), keys))
    deadline = time.monotonic() + 240
    done: set[str] = set()
    while len(done) < len(keys) and time.monotonic() < deadline:
        listing = s3.list_objects_v2(Bucket=settings.output_bucket, Prefix=prediction_key("burst/"))
        done = {item["Key"] for item in listing.get("Contents", [])}
        time.sleep(0.5)
    assert done == {prediction_key(k) for k in keys}
    assert all(len(read_output(lab_stack, prediction_key(k)).splitlines()) == 201 for k in keys[:5])


# -- IAM: the function's role may do exactly what it needs ------------------------------------------------------


@pytest.fixture(scope="module")
def role_session(lab_stack: Lab) -> boto3.session.Session:
    """A session holding the execution role's credentials (the emulator enforces IAM: AUTH=true)."""
    aws, settings = lab_stack.aws, lab_stack.settings
    role_arn = aws.client("iam").get_role(RoleName=settings.role_name)["Role"]["Arn"]
    credentials = aws.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="least-privilege-test")["Credentials"]
    return boto3.session.Session(
        region_name=aws.region,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )


@pytest.fixture(scope="module")
def role_s3(role_session: boto3.session.Session):  # type: ignore[no-untyped-def]
    return role_session.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


@pytest.fixture(scope="module")
def role_sqs(role_session: boto3.session.Session):  # type: ignore[no-untyped-def]
    return role_session.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def _denied(call) -> bool:  # type: ignore[no-untyped-def]
    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"] in {"AccessDenied", "AccessDeniedException"}
    return False


def test_role_may_only_send_to_its_failure_queue(lab_stack: Lab, role_sqs) -> None:  # type: ignore[no-untyped-def]
    """The on-failure destination needs sqs:SendMessage on that one queue; reading or emptying it is for the user."""
    sqs, settings = lab_stack.aws.client("sqs"), lab_stack.settings
    url = sqs.get_queue_url(QueueName=settings.failure_queue_name)["QueueUrl"]
    other = sqs.create_queue(QueueName=f"{settings.prefix}-not-the-failure-queue")["QueueUrl"]
    sent = {"MessageId": None}
    try:
        sent = role_sqs.send_message(QueueUrl=url, MessageBody='{"probe": true}')
        assert _denied(lambda: role_sqs.receive_message(QueueUrl=url))
        assert _denied(lambda: role_sqs.purge_queue(QueueUrl=url))
        assert _denied(lambda: role_sqs.send_message(QueueUrl=other, MessageBody="x"))
    finally:
        sqs.delete_queue(QueueUrl=other)
        for received in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            if received["MessageId"] == sent["MessageId"]:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=received["ReceiptHandle"])


def test_role_can_do_what_the_function_needs(lab_stack: Lab, role_s3, sample_csv: Path) -> None:  # type: ignore[no-untyped-def]
    settings = lab_stack.settings
    lab_stack.s3().upload_file(str(sample_csv), settings.input_bucket, "iam/in.csv")
    assert role_s3.get_object(Bucket=settings.input_bucket, Key="iam/in.csv")["Body"].read()
    assert role_s3.get_object(Bucket=settings.model_bucket, Key=settings.model_key)["Body"].read()
    role_s3.put_object(Bucket=settings.output_bucket, Key=prediction_key("iam/probe.csv"), Body=b"x")
    role_s3.put_object(Bucket=settings.output_bucket, Key=error_key("iam/probe.csv"), Body=b"{}")


def test_role_cannot_do_anything_else(lab_stack: Lab, role_s3) -> None:  # type: ignore[no-untyped-def]
    settings = lab_stack.settings
    lab_stack.s3().put_object(Bucket=settings.output_bucket, Key=prediction_key("iam/secret.csv"), Body=b"x")
    assert _denied(lambda: role_s3.put_object(Bucket=settings.input_bucket, Key="iam/overwrite.csv", Body=b"x"))
    assert _denied(lambda: role_s3.put_object(Bucket=settings.model_bucket, Key=settings.model_key, Body=b"x"))
    assert _denied(lambda: role_s3.get_object(Bucket=settings.output_bucket, Key=prediction_key("iam/secret.csv")))
    assert _denied(lambda: role_s3.put_object(Bucket=settings.output_bucket, Key="elsewhere.csv", Body=b"x"))
    assert _denied(lambda: role_s3.delete_object(Bucket=settings.input_bucket, Key="iam/in.csv"))
    assert _denied(lambda: role_s3.list_objects_v2(Bucket=settings.input_bucket))
    assert _denied(lambda: role_s3.get_object(Bucket=settings.model_bucket, Key="layers/anything.zip"))


def test_policy_in_the_repo_is_what_is_attached(lab_stack: Lab) -> None:
    aws, settings = lab_stack.aws, lab_stack.settings
    attached = aws.client("iam").get_role_policy(RoleName=settings.role_name, PolicyName="batch-predict")
    assert attached["PolicyDocument"] == execution_policy(settings, aws)
    statements = attached["PolicyDocument"]["Statement"]
    actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions == {
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "s3:GetObject",
        "s3:PutObject",
        "sqs:SendMessage",
    }


# -- bootstrap is idempotent; teardown leaves nothing ------------------------------------------------------------


def test_second_bootstrap_changes_nothing(lab_stack: Lab) -> None:
    changes = run_bootstrap(lab_stack.settings, lab_stack.aws)
    assert {c.action for c in changes} == {"unchanged"}, changes
    # 3 buckets, queue, role, role policy, log group, layer, function, async invocation, permission, notification
    assert len(changes) == 12


NOTIFICATION_KEYS = ("LambdaFunctionConfigurations", "QueueConfigurations", "TopicConfigurations")


def test_bootstrap_repairs_drift(lab_stack: Lab) -> None:
    """Drift made by hand on the session's own function and bucket; put back in ``finally`` whatever bootstrap does,
    so a failure here does not leave the other tests a 3 s function that no upload triggers."""
    aws, settings = lab_stack.aws, lab_stack.settings
    lam, s3 = aws.client("lambda"), aws.client("s3")
    timeout = lam.get_function_configuration(FunctionName=settings.function_name)["Timeout"]
    notification = s3.get_bucket_notification_configuration(Bucket=settings.input_bucket)
    notification = {key: notification[key] for key in NOTIFICATION_KEYS if notification.get(key)}
    assert notification and timeout != 3
    try:
        lam.update_function_configuration(FunctionName=settings.function_name, Timeout=3)
        lam.get_waiter("function_updated_v2").wait(FunctionName=settings.function_name)
        s3.put_bucket_notification_configuration(Bucket=settings.input_bucket, NotificationConfiguration={})
        changes = {c.kind: c for c in run_bootstrap(settings, aws)}
        assert changes["function"].action == "updated" and "timeout" in changes["function"].detail
        assert changes["notification"].action == "created"
        assert {c.action for c in run_bootstrap(settings, aws)} == {"unchanged"}
    finally:
        if lam.get_function_configuration(FunctionName=settings.function_name)["Timeout"] != timeout:
            lam.update_function_configuration(FunctionName=settings.function_name, Timeout=timeout)
            lam.get_waiter("function_updated_v2").wait(FunctionName=settings.function_name)
        current = s3.get_bucket_notification_configuration(Bucket=settings.input_bucket)
        if {key: current[key] for key in NOTIFICATION_KEYS if current.get(key)} != notification:
            s3.put_bucket_notification_configuration(
                Bucket=settings.input_bucket, NotificationConfiguration=notification
            )


def test_teardown_leaves_nothing(lab_stack: Lab) -> None:
    """On a second prefix, so the session's own resources stay up for the other tests; with no tracking server at its
    mlflow port (whether or not the session started one elsewhere)."""
    settings = Settings(**{**lab_stack.settings.model_dump(), "prefix": "lab-teardown", "mlflow_port": free_port()})
    aws = lab_stack.aws
    layer = build_lambda_layer(settings, aws)
    created = bootstrap(settings, aws, layer)
    assert {c.action for c in created} == {"created", "published"}, created
    aws.client("s3").put_object(Bucket=settings.output_bucket, Key=prediction_key("x.csv"), Body=b"x")
    report = teardown(settings, aws)
    deleted = {c.kind for c in report.changes if c.action == "deleted"}
    assert deleted >= {"bucket", "function", "layer", "log group", "queue", "role", "role policy", "notification"}
    assert report.complete, (report.left, report.unchecked)
    assert not [b for b in aws.client("s3").list_buckets()["Buckets"] if b["Name"].startswith("lab-teardown-")]
    with pytest.raises(ClientError) as caught:
        aws.client("lambda").get_function(FunctionName=settings.function_name)
    assert error_code(caught.value) == "ResourceNotFoundException", caught.value.response
    with pytest.raises(ClientError) as caught:
        aws.client("iam").get_role(RoleName=settings.role_name)
    assert error_code(caught.value) == "NoSuchEntity", caught.value.response
    assert not aws.client("lambda").list_layer_versions(LayerName=settings.layer_name)["LayerVersions"]
    with pytest.raises(ClientError) as caught:
        aws.client("sqs").get_queue_url(QueueName=settings.failure_queue_name)
    assert error_code(caught.value) in {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
    again = teardown(settings, aws)
    assert again.complete
    # No tracking server answers: the registry says so rather than "nothing there".
    assert {(c.kind, c.action) for c in again.changes if c.action != "absent"} == {("registry", "unchecked")}


def test_layer_bundled_into_the_function_for_emulators_that_ignore_layers(
    lab_stack: Lab, sample_csv: Path, trained_model_path: Path, tmp_path: Path
) -> None:
    """LAB_LAMBDA_BUNDLE_LAYER=true (LocalStack's free image accepts layers but never applies them): no layer, the
    layer's files in the function's own code zip (through S3: it is large), and the same predictions."""
    settings = Settings(**{**lab_stack.settings.model_dump(), "prefix": "lab-bundled", "lambda_bundle_layer": True})
    aws = lab_stack.aws
    try:
        changes = bootstrap(settings, aws, build_lambda_layer(settings, aws))
        assert "layer" not in {c.kind for c in changes}
        model.publish(settings, aws, trained_model_path.read_bytes())
        configuration = aws.client("lambda").get_function(FunctionName=settings.function_name)["Configuration"]
        assert not configuration.get("Layers")
        assert configuration["CodeSize"] > 10_000_000  # onnxruntime and numpy came with the code
        result = jobs.predict_file(settings, aws, sample_csv, key="bundled/sample.csv", out_dir=tmp_path)
        assert (result.status, result.rows) == ("ok", 500)
        expected = jobs.predict_file(
            lab_stack.settings, aws, sample_csv, key="bundled/sample.csv", out_dir=tmp_path / "l"
        )
        assert result.local_path.read_bytes() == expected.local_path.read_bytes()
        assert {c.action for c in bootstrap(settings, aws, build_lambda_layer(settings, aws))} == {"unchanged"}
    finally:
        teardown(settings, aws)
