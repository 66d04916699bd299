"""SageMaker through mlflow, offline: mlflow's own deployments client against moto (control plane) + MiniStack.

moto runs no containers, so the invocation tests send the request botocore builds for ``invoke_endpoint`` to a
container's ``/invocations``: the lab's API and mlflow's scoring server (what the mlflow-pyfunc image runs).
"""

from __future__ import annotations

import io
import json
import tarfile

import boto3
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mlops_lab import registry, sagemaker
from mlops_lab.data import FEATURES, generate
from mlops_lab.inference import TabularModel
from mlops_lab.settings import Settings, get_settings
from tests.support import Lab, free_port

# Every test here uses mlflow_lab or moto_url: tests/conftest.py marks them integration.


@pytest.fixture(scope="module")
def moto_url():  # type: ignore[no-untyped-def]
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def champion(mlflow_lab: Lab) -> registry.LoggedVersion:
    logged = registry.train_and_log(mlflow_lab.settings, rows=2000, seed=4, run_name="sagemaker")
    registry.promote(mlflow_lab.settings, mlflow_lab.aws, logged.version)
    return logged


@pytest.fixture(scope="module")
def deployment(mlflow_lab: Lab, champion: registry.LoggedVersion, moto_url: str) -> sagemaker.Deployment:
    return sagemaker.deploy(mlflow_lab.settings, mlflow_lab.aws, sagemaker_url=moto_url, timeout_s=60)


def moto_client(moto_url: str, service: str = "sagemaker"):  # type: ignore[no-untyped-def]
    return boto3.client(service, endpoint_url=moto_url, region_name="us-east-1")


# -- the control plane ----------------------------------------------------------------------------------------------


def test_deploy_creates_model_config_and_endpoint(
    mlflow_lab: Lab, champion: registry.LoggedVersion, deployment: sagemaker.Deployment, moto_url: str
) -> None:
    settings, aws = mlflow_lab.settings, mlflow_lab.aws
    assert deployment.mode == "create" and deployment.status == "InService"
    assert deployment.model_uri == f"models:/{settings.model_name}@champion"
    sm = moto_client(moto_url)
    endpoint = sm.describe_endpoint(EndpointName=settings.sagemaker_endpoint)
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    model = sm.describe_model(ModelName=variant["ModelName"])
    # The image is the one in the (emulated) ECR repository, tagged with mlflow's version, as mlflow names it.
    repository = aws.client("ecr").describe_repositories(repositoryNames=[settings.sagemaker_repository])
    assert model["PrimaryContainer"]["Image"] == repository["repositories"][0]["repositoryUri"] + ":3.17.2"
    # The execution role is the one created in MiniStack's IAM, trusted by SageMaker.
    role = aws.client("iam").get_role(RoleName=settings.sagemaker_role_name)["Role"]
    assert model["ExecutionRoleArn"] == role["Arn"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    # The model data is the registered version, tarred into the model bucket, with the ONNX the Lambda serves.
    data_url = model["PrimaryContainer"]["ModelDataUrl"]
    assert data_url == f"s3://{settings.model_bucket}/{variant['ModelName']}/model.tar.gz"
    bucket, key = data_url.removeprefix("s3://").split("/", 1)
    archive = mlflow_lab.s3().get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        onnx = tar.extractfile(next(n for n in names if n.endswith("model.onnx"))).read()  # type: ignore[union-attr]
    assert "MLmodel" in names and "onnx_pyfunc.py" in names
    assert onnx == registry.version_onnx(settings, champion.version)
    assert variant["InstanceType"] == sagemaker.INSTANCE_TYPE and variant["InitialInstanceCount"] == 1
    assert "python_function" in model["PrimaryContainer"]["Environment"].values()  # MLFLOW_DEPLOYMENT_FLAVOR_NAME


def test_deploying_again_replaces_the_model(mlflow_lab: Lab, deployment: sagemaker.Deployment, moto_url: str) -> None:
    again = sagemaker.deploy(mlflow_lab.settings, mlflow_lab.aws, sagemaker_url=moto_url, timeout_s=60)
    assert again.mode == "recreate" and again.status == "InService"  # moto has no UpdateEndpoint (AWS: "replace")
    assert again.endpoint == deployment.endpoint and again.model != deployment.model
    models = [m["ModelName"] for m in moto_client(moto_url).list_models()["Models"]]
    assert again.model in models and deployment.model not in models  # the old model was deleted with its endpoint
    assert {c.action for c in again.changes} == {"unchanged"}  # repository and role were already there


def test_sdk_outside_the_context_is_not_redirected(moto_url: str) -> None:
    with sagemaker.sagemaker_endpoint(moto_url):
        assert boto3.client("sagemaker", region_name="us-east-1").meta.endpoint_url == moto_url
    assert boto3.client("sagemaker", region_name="us-east-1").meta.endpoint_url != moto_url


# -- the data plane: invoke_endpoint's request formats against real containers -----------------------------------


SAMPLE = generate(25, seed=12, with_label=False)


@pytest.fixture(scope="module")
def containers(mlflow_lab: Lab, champion: registry.LoggedVersion, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The lab's API serving the champion's ONNX, and mlflow's scoring server serving the registered version."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    from mlops_lab.api import create_app

    onnx_file = tmp_path_factory.mktemp("champion") / "model.onnx"
    onnx_file.write_bytes(registry.version_onnx(mlflow_lab.settings, champion.version))
    settings = Settings(api_access_log=False, api_model_poll_s=0)
    with (
        TestClient(create_app(settings, onnx_file)) as api,
        TestClient(scoring_server.init(mlflow.pyfunc.load_model(champion.model_uri))) as mlflow_server,
    ):
        yield {"lab-api": api, "mlflow-pyfunc": mlflow_server}


def expected_labels(champion: registry.LoggedVersion) -> list[str]:
    return TabularModel(champion.onnx_path).predict_records(SAMPLE.to_dict("records")).labels.tolist()


def labels_from(container: str, body: bytes) -> list[str]:
    payload = json.loads(body)
    if container == "lab-api":
        return [p["label"] for p in payload["predictions"]]
    return [p["prediction"] for p in payload["predictions"]]


REQUESTS = {
    "text/csv": SAMPLE.to_csv(index=False).encode(),
    "application/json": json.dumps(
        {"dataframe_split": json.loads(SAMPLE.to_json(orient="split", index=False))}
    ).encode(),
    "application/json; instances": json.dumps({"instances": SAMPLE.to_dict("records")}).encode(),
}


@pytest.mark.parametrize("container", ["lab-api", "mlflow-pyfunc"])
@pytest.mark.parametrize("request_format", list(REQUESTS))
def test_invoke_endpoint_formats_round_trip(
    containers,
    champion: registry.LoggedVersion,
    deployment: sagemaker.Deployment,
    container: str,  # type: ignore[no-untyped-def]
    request_format: str,
    moto_url: str,
) -> None:
    session = boto3.session.Session(region_name="us-east-1")
    undo = sagemaker.forward_invocations(session, containers[container])
    try:
        runtime = session.client("sagemaker-runtime", endpoint_url=moto_url)
        answer = runtime.invoke_endpoint(
            EndpointName=deployment.endpoint,
            Body=REQUESTS[request_format],
            ContentType=request_format.split(";")[0],
            Accept="application/json",
        )
    finally:
        undo()
    assert answer["ContentType"].startswith("application/json")
    assert labels_from(container, answer["Body"].read()) == expected_labels(champion)


def test_bad_input_comes_back_as_a_model_error(containers, deployment: sagemaker.Deployment, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    session = boto3.session.Session(region_name="us-east-1")
    undo = sagemaker.forward_invocations(session, containers["lab-api"])
    try:
        runtime = session.client("sagemaker-runtime", endpoint_url=moto_url)
        with pytest.raises(runtime.exceptions.ModelError, match="missing columns"):
            runtime.invoke_endpoint(
                EndpointName=deployment.endpoint, Body=b"age,sex\n39,Male\n", ContentType="text/csv"
            )
    finally:
        undo()


def test_mlflow_deploy_client_predict(containers, champion, deployment: sagemaker.Deployment, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """mlflow's own `predict` (dataframe_split JSON through invoke_endpoint), answered by mlflow's scoring server."""
    from mlflow.deployments import get_deploy_client

    session = boto3._get_default_session()
    undo = sagemaker.forward_invocations(session, containers["mlflow-pyfunc"])
    try:
        with sagemaker.sagemaker_endpoint(moto_url):
            predictions = get_deploy_client("sagemaker:/us-east-1").predict(deployment.endpoint, SAMPLE[list(FEATURES)])
    finally:
        undo()
    assert predictions.get_predictions()["prediction"].tolist() == expected_labels(champion)


BOX_RULES = str.maketrans(dict.fromkeys("│┃|", " "))


# -- the CLI ------------------------------------------------------------------------------------------------------


def test_cli_models_promote_and_deploy(
    mlflow_lab: Lab, champion: registry.LoggedVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlops_lab import stack
    from mlops_lab.cli import app

    settings = mlflow_lab.settings
    for key, value in {
        "LAB_PREFIX": settings.prefix,
        "LAB_STATE_DIR": str(settings.state_dir),
        "LAB_EMULATOR_PORT": str(settings.emulator_port),
        "LAB_MLFLOW_PORT": str(settings.mlflow_port),
        "LAB_SAGEMAKER_EMULATOR_PORT": str(free_port()),
        "LAB_SAGEMAKER_ENDPOINT_NAME": "cli-endpoint",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        listed = runner.invoke(app, ["models"])
        assert listed.exit_code == 0, listed.output
        table = [line.translate(BOX_RULES).split() for line in listed.output.splitlines()]
        versions = {cells[0]: cells for cells in table if cells and cells[0].isdigit()}
        # (a substring test would match the "live" column header, or a "3" anywhere in the table)
        assert versions[champion.version][1:3] == ["champion", "live"], listed.output
        assert [v for v, cells in versions.items() if "live" in cells] == [champion.version]
        promoted = runner.invoke(app, ["promote", champion.version])
        assert promoted.exit_code == 0, promoted.output
        assert f"version {champion.version} is now @champion" in promoted.output
        refused = runner.invoke(app, ["promote", "999"])
        assert refused.exit_code != 0
        deployed = runner.invoke(app, ["deploy", "sagemaker", "--no-invoke"])
        assert deployed.exit_code == 0, deployed.output
        assert "created endpoint cli-endpoint (InService) on moto" in " ".join(deployed.output.split())
    finally:
        stack.stop(get_settings(), sagemaker.SERVICE_NAME)
        get_settings.cache_clear()
