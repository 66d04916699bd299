"""The lab's SageMaker (src/mlops_lab/sagemaker/server.py) on the session's emulator, reached the SDK's way:
moto's control plane records, endpoints answered by their model, UpdateEndpoint, the guard, and a second process
that knows nothing but the lab's AWS profile."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from mlops_lab import emulator, sagemaker
from mlops_lab.inference import TabularModel
from mlops_lab.synthetic import generate
from tests.model_zoo import lab_classifier
from tests.support import Lab, error_code, isolated_environment, running_lab

ROLE = "arn:aws:iam::000000000000:role/lab-test-sagemaker"


@pytest.fixture(scope="module")
def server(lab_stack: Lab) -> Iterator[Lab]:
    """The lab's SageMaker on the session's stack, as `up` starts it."""
    with running_lab(lab_stack.settings, [sagemaker.SERVICE_NAME]) as lab:
        yield lab


def clients(lab: Lab) -> tuple:
    url = lab.settings.sagemaker_emulator_url
    region = lab.aws.region
    return (
        boto3.client("sagemaker", endpoint_url=url, region_name=region),
        boto3.client("sagemaker-runtime", endpoint_url=url, region_name=region),
    )


def model_tarball(model_path: Path) -> bytes:
    """A model.tar.gz as SageMaker expects one: the model's files at the archive's top."""
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w:gz") as archive:
        archive.add(model_path, arcname="model.onnx")
    return sink.getvalue()


def put_model(lab: Lab, sm, name: str, model_path: Path) -> str:  # type: ignore[no-untyped-def]
    key = f"sagemaker-tests/{name}/model.tar.gz"
    lab.aws.client("s3").put_object(Bucket=lab.settings.model_bucket, Key=key, Body=model_tarball(model_path))
    data_url = f"s3://{lab.settings.model_bucket}/{key}"
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": "000000000000.dkr.ecr.us-east-1.amazonaws.com/lab:latest", "ModelDataUrl": data_url},
    )
    return data_url


def endpoint_with(sm, endpoint: str, config: str, model: str) -> None:  # type: ignore[no-untyped-def]
    sm.create_endpoint_config(
        EndpointConfigName=config,
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": model, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}
        ],
    )
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=config)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig={"Delay": 1, "MaxAttempts": 30})


@pytest.fixture(scope="module")
def models(server: Lab, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two models that disagree on some rows (trained on different seeds and sizes)."""
    folder = tmp_path_factory.mktemp("sagemaker-models")
    return {
        "a": lab_classifier(folder / "a.onnx", rows=3000, seed=11),
        "b": lab_classifier(folder / "b.onnx", rows=300, seed=97),
    }


def expected_labels(model_path: Path, frame) -> list[str]:  # type: ignore[no-untyped-def]
    model = TabularModel(model_path)
    return model.predict_records(frame.to_dict(orient="records")).label_texts()


def test_an_endpoint_is_answered_by_its_own_model(server: Lab, models: dict[str, Path]) -> None:
    sm, runtime = clients(server)
    put_model(server, sm, "server-model-a", models["a"])
    endpoint_with(sm, "server-endpoint", "server-config-a", "server-model-a")
    rows = generate(200, seed=21, with_label=False)
    answer = runtime.invoke_endpoint(
        EndpointName="server-endpoint", ContentType="text/csv", Accept="text/csv", Body=rows.to_csv(index=False)
    )
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    labels = [line.split(",")[0] for line in answer["Body"].read().decode().splitlines()]
    assert labels[-200:] == expected_labels(models["a"], rows)


def test_update_endpoint_moves_it_to_the_new_model(server: Lab, models: dict[str, Path]) -> None:
    sm, runtime = clients(server)
    put_model(server, sm, "server-model-b", models["b"])
    endpoint_with(sm, "server-moving", "server-moving-a", "server-model-a")
    sm.create_endpoint_config(
        EndpointConfigName="server-moving-b",
        ProductionVariants=[
            {
                "VariantName": "Blue",
                "ModelName": "server-model-b",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
    )
    rows = generate(300, seed=5, with_label=False)
    a, b = expected_labels(models["a"], rows), expected_labels(models["b"], rows)
    assert a != b  # otherwise this test could not tell the models apart
    sm.update_endpoint(EndpointName="server-moving", EndpointConfigName="server-moving-b")
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName="server-moving", WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    described = sm.describe_endpoint(EndpointName="server-moving")
    assert described["EndpointConfigName"] == "server-moving-b"
    answer = runtime.invoke_endpoint(
        EndpointName="server-moving", ContentType="text/csv", Accept="text/csv", Body=rows.to_csv(index=False)
    )
    assert answer["InvokedProductionVariant"] == "Blue"
    assert [line.split(",")[0] for line in answer["Body"].read().decode().splitlines()][-300:] == b


def test_an_update_to_a_config_that_does_not_exist_is_refused(server: Lab) -> None:
    sm, _ = clients(server)
    with pytest.raises(ClientError) as refused:
        sm.update_endpoint(EndpointName="server-endpoint", EndpointConfigName="no-such-config")
    assert error_code(refused.value) == "ValidationException"
    assert sm.describe_endpoint(EndpointName="server-endpoint")["EndpointConfigName"] == "server-config-a"


def test_an_unknown_endpoint_is_aws_s_validation_error(server: Lab) -> None:
    _, runtime = clients(server)
    with pytest.raises(ClientError) as refused:
        runtime.invoke_endpoint(EndpointName="nowhere", ContentType="text/csv", Body=b"1,2")
    assert error_code(refused.value) == "ValidationError" or "not found" in str(refused.value)


def test_a_model_error_is_424_with_the_container_s_message(server: Lab) -> None:
    _, runtime = clients(server)
    with pytest.raises(ClientError) as failed:
        runtime.invoke_endpoint(EndpointName="server-endpoint", ContentType="text/csv", Body=b"not,a,record\n")
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error_code(failed.value) == "ModelError"


def test_another_origin_gets_nothing(server: Lab) -> None:
    url = server.settings.sagemaker_emulator_url
    headers = {"Origin": "http://evil.example", "Content-Type": "application/x-amz-json-1.1"}
    refused = httpx.post(url + "/", headers={**headers, "X-Amz-Target": "SageMaker.ListModels"}, content=b"{}")
    assert refused.status_code == 403
    invoke = httpx.post(url + "/endpoints/server-endpoint/invocations", headers=headers, content=b"1,2,3")
    assert invoke.status_code == 403
    rebinding = httpx.get(url + "/_lab/health", headers={"Host": "attacker.example:5005"})
    assert rebinding.status_code == 400


def test_a_second_process_with_only_the_profile_reaches_it(server: Lab, tmp_path: Path) -> None:
    """A user's script: `AWS_PROFILE=mlops-lab` and nothing else (no endpoint variables, no keys)."""
    config = tmp_path / "config"
    with isolated_environment(server.settings, AWS_CONFIG_FILE=str(config)):
        emulator.write_profile(server.settings)
    script = (
        "import boto3, json\n"
        "sm = boto3.client('sagemaker')\n"
        "runtime = boto3.client('sagemaker-runtime')\n"
        "names = [m['ModelName'] for m in sm.list_models(MaxResults=100)['Models']]\n"
        "body = runtime.invoke_endpoint(EndpointName='server-endpoint', ContentType='text/csv', Accept='text/csv',"
        " Body=open(0).read())['Body'].read().decode()\n"
        "print(json.dumps({'models': names, 'lines': body.splitlines(), 'where': sm.meta.endpoint_url}))\n"
    )
    rows = generate(5, seed=3, with_label=False).to_csv(index=False)
    environment = {"PATH": "/usr/bin:/bin", "AWS_PROFILE": emulator.PROFILE, "AWS_CONFIG_FILE": str(config)}
    environment["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-credentials")
    done = subprocess.run(
        [sys.executable, "-c", script], input=rows, capture_output=True, text=True, env=environment, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["where"] == server.settings.sagemaker_emulator_url
    assert "server-model-a" in seen["models"]
    assert len(seen["lines"]) in (5, 6)  # 5 records (a header line only if the container still writes one)
