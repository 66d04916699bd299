"""SageMaker through mlflow, offline: mlflow's own deployments client against the lab's SageMaker (moto's records,
endpoints answered by their model, UpdateEndpoint) + MiniStack; ``invoke_endpoint`` is boto3's own, answered by the
deployed model.tar.gz served with the lab's serving code."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator

import boto3
import pytest
from typer.testing import CliRunner

from mlops_lab import ownership, registry, sagemaker, training
from mlops_lab.aws import Change, tag_dict
from mlops_lab.bootstrap import ensure_bucket
from mlops_lab.data import FEATURES
from mlops_lab.inference import TabularModel
from mlops_lab.settings import PREFIX_TAG, Settings, get_settings
from mlops_lab.synthetic import generate
from tests.support import NOT_FOUND_CODES, Lab, error_code, free_port, isolated_environment, running_lab


@pytest.fixture(scope="module")
def sagemaker_url(mlflow_lab: Lab) -> Iterator[str]:
    """The lab's SageMaker (moto's records, endpoints served, transform jobs run) on the session's stack."""
    with running_lab(mlflow_lab.settings, [sagemaker.SERVICE_NAME]) as lab:
        yield lab.settings.sagemaker_emulator_url


@pytest.fixture(scope="module")
def champion(mlflow_lab: Lab) -> training.LoggedVersion:
    logged = training.train_and_log(mlflow_lab.settings, rows=2000, seed=4, run_name="sagemaker")
    registry.promote(mlflow_lab.settings, mlflow_lab.aws, logged.version)
    return logged


@pytest.fixture(scope="module")
def deployment(mlflow_lab: Lab, champion: training.LoggedVersion, sagemaker_url: str) -> sagemaker.Deployment:
    return sagemaker.deploy(mlflow_lab.settings, mlflow_lab.aws, sagemaker_url=sagemaker_url, timeout_s=60)


def sagemaker_api(sagemaker_url: str, service: str = "sagemaker"):  # type: ignore[no-untyped-def]
    return boto3.client(service, endpoint_url=sagemaker_url, region_name="us-east-1")


# -- the control plane ----------------------------------------------------------------------------------------------


def test_deploy_creates_model_config_and_endpoint(
    mlflow_lab: Lab, champion: training.LoggedVersion, deployment: sagemaker.Deployment, sagemaker_url: str
) -> None:
    settings, aws = mlflow_lab.settings, mlflow_lab.aws
    assert deployment.mode == "create" and deployment.status == "InService"
    assert deployment.model_uri == f"models:/{settings.model_name}@champion"
    sm = sagemaker_api(sagemaker_url)
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


def test_deploying_again_replaces_the_model(
    mlflow_lab: Lab, deployment: sagemaker.Deployment, sagemaker_url: str
) -> None:
    again = sagemaker.deploy(mlflow_lab.settings, mlflow_lab.aws, sagemaker_url=sagemaker_url, timeout_s=60)
    assert again.mode == "replace" and again.status == "InService"  # UpdateEndpoint, as on AWS
    assert again.endpoint == deployment.endpoint and again.model != deployment.model
    models = [m["ModelName"] for m in sagemaker_api(sagemaker_url).list_models()["Models"]]
    assert again.model in models and deployment.model not in models  # mlflow deleted the model it replaced
    assert {c.action for c in again.changes} == {"unchanged"}  # repository and role were already there


def test_sdk_outside_the_context_is_not_redirected(sagemaker_url: str) -> None:
    with sagemaker.sagemaker_endpoint(sagemaker_url):
        assert boto3.client("sagemaker", region_name="us-east-1").meta.endpoint_url == sagemaker_url
    assert boto3.client("sagemaker", region_name="us-east-1").meta.endpoint_url != sagemaker_url


# -- the data plane: invoke_endpoint's request formats against real containers -----------------------------------


SAMPLE = generate(25, seed=12, with_label=False)


def expected_labels(champion: training.LoggedVersion) -> list[str]:
    return TabularModel(champion.onnx_path).predict_records(SAMPLE.to_dict("records")).labels.tolist()


def labels_from(body: bytes) -> list[str]:
    return [p["label"] for p in json.loads(body)["predictions"]]


REQUESTS = {
    "text/csv": SAMPLE.to_csv(index=False).encode(),
    "application/json": json.dumps(
        {"dataframe_split": json.loads(SAMPLE.to_json(orient="split", index=False))}
    ).encode(),
    "application/json; instances": json.dumps({"instances": SAMPLE.to_dict("records")}).encode(),
}


@pytest.mark.parametrize("request_format", list(REQUESTS))
def test_invoke_endpoint_formats_round_trip(
    champion: training.LoggedVersion, deployment: sagemaker.Deployment, request_format: str, sagemaker_url: str
) -> None:
    """boto3's invoke_endpoint, answered by the deployed model (the lab's serving code on mlflow's model.tar.gz)."""
    runtime = boto3.client("sagemaker-runtime", endpoint_url=sagemaker_url, region_name="us-east-1")
    answer = runtime.invoke_endpoint(
        EndpointName=deployment.endpoint,
        Body=REQUESTS[request_format],
        ContentType=request_format.split(";")[0],
        Accept="application/json",
    )
    assert answer["ContentType"].startswith("application/json")
    sm = sagemaker_api(sagemaker_url)
    config = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName=deployment.endpoint)["EndpointConfigName"]
    )
    assert answer["InvokedProductionVariant"] == config["ProductionVariants"][0]["VariantName"]
    assert labels_from(answer["Body"].read()) == expected_labels(champion)


def test_bad_input_comes_back_as_a_model_error(deployment: sagemaker.Deployment, sagemaker_url: str) -> None:
    runtime = boto3.client("sagemaker-runtime", endpoint_url=sagemaker_url, region_name="us-east-1")
    with pytest.raises(runtime.exceptions.ModelError, match="missing columns"):
        runtime.invoke_endpoint(EndpointName=deployment.endpoint, Body=b"age,sex\n39,Male\n", ContentType="text/csv")


def test_mlflow_deploy_client_predict(champion, deployment: sagemaker.Deployment, sagemaker_url: str) -> None:  # type: ignore[no-untyped-def]
    """mlflow's own `predict` (dataframe_split JSON through invoke_endpoint), answered by the endpoint's model."""
    from mlflow.deployments import get_deploy_client

    with sagemaker.sagemaker_endpoint(sagemaker_url):
        predictions = get_deploy_client("sagemaker:/us-east-1").predict(deployment.endpoint, SAMPLE[list(FEATURES)])
    assert predictions.get_predictions()["label"].tolist() == expected_labels(champion)


BOX_RULES = str.maketrans(dict.fromkeys("│┃|", " "))


# -- the CLI ------------------------------------------------------------------------------------------------------


def test_cli_models_promote_and_deploy(mlflow_lab: Lab, champion: training.LoggedVersion, sagemaker_url: str) -> None:
    from mlops_lab.cli import app

    settings = mlflow_lab.settings.model_copy(update={"sagemaker_endpoint_name": "cli-endpoint"})
    runner = CliRunner()
    with isolated_environment(settings):
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
        deployed = runner.invoke(app, ["deploy", "sagemaker"])
        assert deployed.exit_code == 0, deployed.output
        said = " ".join(deployed.output.split())
        assert f"created endpoint cli-endpoint (InService) on the lab's SageMaker at {sagemaker_url}" in said
        assert "invoke_endpoint text/csv ->" in said and "invoke_endpoint application/json ->" in said


# -- tags, delete, remaining --------------------------------------------------------------------------------------


def test_endpoint_config_and_model_carry_the_lab_tags(
    mlflow_lab: Lab, deployment: sagemaker.Deployment, sagemaker_url: str
) -> None:
    settings = mlflow_lab.settings
    sm = sagemaker_api(sagemaker_url)
    endpoint = sm.describe_endpoint(EndpointName=settings.sagemaker_endpoint)  # (a later test may have redeployed)
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])

    def tags(arn: str) -> dict[str, str]:
        return {tag["Key"]: tag["Value"] for tag in sm.list_tags(ResourceArn=arn)["Tags"]}

    wanted = settings.resource_tags.items()
    assert settings.resource_tags["mlops-lab:prefix"] == settings.prefix
    # mlflow tags the endpoint (beside its app_name) and the model (beside model_uri) with the deployment's tags ...
    assert wanted <= tags(endpoint["EndpointArn"]).items()
    assert wanted <= tags(model["ModelArn"]).items()
    assert tags(model["ModelArn"])["model_uri"] == f"models:/{settings.model_name}@champion"
    # ... but gives the endpoint config only its app_name tag: deploy adds the lab's tags to it itself.
    assert wanted <= tags(config["EndpointConfigArn"]).items()
    # The execution role deploy makes is the lab's too.
    role_tags = mlflow_lab.aws.client("iam").list_role_tags(RoleName=settings.sagemaker_role_name)["Tags"]
    assert wanted <= tag_dict(role_tags).items()


def test_deploy_takes_over_a_role_and_repository_of_its_names_only_with_adopt(
    mlflow_lab: Lab, champion: training.LoggedVersion, sagemaker_url: str
) -> None:
    """The execution role and image repository of deploy's names lose the lab's tag (or are made without it): deploy
    refuses them and deploys nothing; with adopt it tags them and deploys with them."""
    settings, aws = endpoint_settings(mlflow_lab, "adopted"), mlflow_lab.aws
    iam, ecr = aws.client("iam"), aws.client("ecr")
    role, repository = settings.sagemaker_role_name, settings.sagemaker_repository
    sagemaker.ensure_repository(settings, aws)  # (an earlier deploy of the module may have made them already)
    sagemaker.ensure_role(settings, aws)
    repository_arn = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]["repositoryArn"]
    iam.untag_role(RoleName=role, TagKeys=[PREFIX_TAG])
    ecr.untag_resource(resourceArn=repository_arn, tagKeys=[PREFIX_TAG])
    try:
        with pytest.raises(ownership.NotOurs) as caught:
            sagemaker.deploy(settings, aws, sagemaker_url=sagemaker_url, timeout_s=60)
        assert role in str(caught.value) and repository in str(caught.value) and "--adopt" in str(caught.value)
        assert sagemaker.remaining(settings, aws, sagemaker_url=sagemaker_url) == [], "nothing deployed"
        assert PREFIX_TAG not in tag_dict(iam.list_role_tags(RoleName=role)["Tags"])

        deployed = sagemaker.deploy(settings, aws, sagemaker_url=sagemaker_url, timeout_s=60, adopt=True)
        assert deployed.status == "InService"
        assert deployed.role_arn == iam.get_role(RoleName=role)["Role"]["Arn"]
        assert {(c.kind, c.action) for c in deployed.changes} >= {("role", "updated"), ("ecr repository", "updated")}
        assert tag_dict(iam.list_role_tags(RoleName=role)["Tags"])[PREFIX_TAG] == settings.prefix
        assert tag_dict(ecr.list_tags_for_resource(resourceArn=repository_arn)["tags"])[PREFIX_TAG] == settings.prefix
        assert ownership.strangers(settings, aws, made_by="deploy sagemaker") == []
    finally:
        sagemaker.ensure_repository(settings, aws)  # the lab's again, whatever happened above
        sagemaker.ensure_role(settings, aws)
        sagemaker.delete_deployment(settings, aws, sagemaker_url=sagemaker_url)


def test_mlflow_names_are_the_ones_delete_looks_for() -> None:
    """delete/remaining select configs and models by the names mlflow's client gives them, truncation included."""
    from mlflow import sagemaker as mlflow_sagemaker

    for endpoint in ("lab-endpoint", "a-rather-long-endpoint-name-that-mlflow-must-truncate-somewhere"):
        model = mlflow_sagemaker._get_sagemaker_model_name(endpoint)
        config = mlflow_sagemaker._get_sagemaker_config_name(endpoint)
        assert sagemaker.name_pattern(endpoint, sagemaker.MODEL_SUFFIX).fullmatch(model), model
        assert sagemaker.name_pattern(endpoint, sagemaker.CONFIG_SUFFIX).fullmatch(config), config
        assert model.startswith(sagemaker.mlflow_base_name(endpoint, sagemaker.MODEL_SUFFIX))
    assert not sagemaker.name_pattern("lab", sagemaker.MODEL_SUFFIX).fullmatch("lab-2-model-" + "a" * 20)
    assert not sagemaker.name_pattern("lab", sagemaker.MODEL_SUFFIX).fullmatch("xlab-model-" + "a" * 20)


def endpoint_settings(lab: Lab, name: str) -> Settings:
    """The lab's settings with an endpoint of the test's own (the module's `deployment` stays as it is)."""
    return lab.settings.model_copy(update={"sagemaker_endpoint_name": name})


def data_key(deployment: sagemaker.Deployment) -> str:
    return deployment.model_data.removeprefix("s3://").split("/", 1)[1]


def object_exists(lab: Lab, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        lab.s3().head_object(Bucket=lab.settings.model_bucket, Key=key)
        return True
    except ClientError as error:
        if error_code(error) in NOT_FOUND_CODES:
            return False
        raise


def test_delete_after_deploy_leaves_nothing(
    mlflow_lab: Lab, champion: training.LoggedVersion, sagemaker_url: str
) -> None:
    settings, aws = endpoint_settings(mlflow_lab, "delete-once"), mlflow_lab.aws
    deployed = sagemaker.deploy(settings, aws, sagemaker_url=sagemaker_url, timeout_s=60)
    assert sagemaker.remaining(settings, aws, sagemaker_url=sagemaker_url) == [
        ("SageMaker endpoint", "delete-once"),
        ("endpoint config", deployed.endpoint_config),
        ("SageMaker model", deployed.model),
    ]
    # Bystanders whose names contain the endpoint's but are not mlflow's names for it.
    sm = sagemaker_api(sagemaker_url)
    others = ["delete-once-2-model-" + "a" * 20, "xdelete-once-model-" + "a" * 20, "delete-once-model-custom"]
    for other in others:
        sm.create_model(
            ModelName=other,
            PrimaryContainer={"Image": deployed.image, "ModelDataUrl": deployed.model_data},
            ExecutionRoleArn=deployed.role_arn,
        )
    s3 = mlflow_lab.s3()
    s3.put_object(Bucket=settings.model_bucket, Key="delete-once-model-custom/keep.txt", Body=b"not mlflow's")
    try:
        seen: list[Change] = []
        changes = sagemaker.delete_deployment(settings, aws, sagemaker_url=sagemaker_url, on_change=seen.append)
        assert seen == changes
        assert [(c.kind, c.name, c.action) for c in changes] == [
            ("SageMaker endpoint", "delete-once", "deleted"),
            ("endpoint config", deployed.endpoint_config, "deleted"),
            ("SageMaker model", deployed.model, "deleted"),
            ("model data", deployed.model_data, "deleted"),
        ]
        assert sagemaker.remaining(settings, aws, sagemaker_url=sagemaker_url) == []
        assert not object_exists(mlflow_lab, data_key(deployed))
        assert {m["ModelName"] for m in sm.list_models()["Models"]} >= set(others)
        assert object_exists(mlflow_lab, "delete-once-model-custom/keep.txt")
        again = sagemaker.delete_deployment(settings, aws, sagemaker_url=sagemaker_url)
        assert [(c.kind, c.action) for c in again] == [
            ("SageMaker endpoint", "absent"),
            ("endpoint config", "absent"),
            ("SageMaker model", "absent"),
            ("model data", "absent"),
        ]
    finally:
        for other in others:
            sm.delete_model(ModelName=other)
        s3.delete_object(Bucket=settings.model_bucket, Key="delete-once-model-custom/keep.txt")


def test_delete_removes_what_earlier_deploys_left(
    mlflow_lab: Lab, champion: training.LoggedVersion, sagemaker_url: str
) -> None:
    settings, aws = endpoint_settings(mlflow_lab, "delete-twice"), mlflow_lab.aws
    first = sagemaker.deploy(settings, aws, sagemaker_url=sagemaker_url, timeout_s=60)
    # A deploy that did not finish (or an endpoint deleted by hand) leaves its config, model and model data behind;
    # the next deploy creates new ones beside them.
    sagemaker_api(sagemaker_url).delete_endpoint(EndpointName="delete-twice")
    second = sagemaker.deploy(settings, aws, sagemaker_url=sagemaker_url, timeout_s=60)
    assert second.mode == "create" and second.model != first.model
    left = sagemaker.remaining(settings, aws, sagemaker_url=sagemaker_url)
    assert sorted(left) == sorted(
        [
            ("SageMaker endpoint", "delete-twice"),
            *(("endpoint config", d.endpoint_config) for d in (first, second)),
            *(("SageMaker model", d.model) for d in (first, second)),
        ]
    )
    assert left[1] == ("endpoint config", second.endpoint_config)  # the endpoint's own first
    changes = sagemaker.delete_deployment(settings, aws, sagemaker_url=sagemaker_url)
    deleted = {(c.kind, c.name) for c in changes if c.action == "deleted"}
    for d in (first, second):
        assert {("endpoint config", d.endpoint_config), ("SageMaker model", d.model)} <= deleted
        assert ("model data", d.model_data) in deleted
        assert not object_exists(mlflow_lab, data_key(d))
    assert sagemaker.remaining(settings, aws, sagemaker_url=sagemaker_url) == []


def test_sagemaker_not_answering_is_its_own_error(mlflow_lab: Lab) -> None:
    settings, aws = endpoint_settings(mlflow_lab, "nowhere"), mlflow_lab.aws
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for call in (sagemaker.remaining, sagemaker.delete_deployment):
        with pytest.raises(sagemaker.SageMakerUnreachable, match=f"SageMaker does not answer at {url}"):
            call(settings, aws, sagemaker_url=url)


def test_delete_without_the_model_bucket(mlflow_lab: Lab, sagemaker_url: str) -> None:
    settings = endpoint_settings(mlflow_lab, "no-bucket").model_copy(update={"prefix": "lab-test-nobucket"})
    changes = sagemaker.delete_deployment(settings, mlflow_lab.aws, sagemaker_url=sagemaker_url)
    assert {c.action for c in changes} == {"absent"} and len(changes) == 4


def test_cli_deploy_sagemaker_delete(mlflow_lab: Lab, champion: training.LoggedVersion, sagemaker_url: str) -> None:
    from mlops_lab import stack
    from mlops_lab.cli import app

    settings, aws = endpoint_settings(mlflow_lab, "cli-delete"), mlflow_lab.aws
    deployed = sagemaker.deploy(settings, aws, sagemaker_url=sagemaker_url, timeout_s=60)
    runner = CliRunner()
    # the lab's SageMaker is the module's (on its port): the command finds the endpoint there
    with isolated_environment(
        settings.model_copy(update={"sagemaker_emulator_port": int(sagemaker_url.rsplit(":", 1)[1])})
    ):
        deleted = runner.invoke(app, ["deploy", "sagemaker", "--delete"])
        assert deleted.exit_code == 0, deleted.output
        lines = [" ".join(line.split()) for line in deleted.output.splitlines()]
        for kind, name in [
            ("SageMaker endpoint", "cli-delete was InService"),
            ("endpoint config", deployed.endpoint_config),
            ("SageMaker model", deployed.model),
            ("model data", deployed.model_data),
        ]:
            assert any(line.startswith(f"deleted {kind} {name}") for line in lines), deleted.output
        assert "4 deleted." in lines
        assert sagemaker.remaining(settings, aws, sagemaker_url=sagemaker_url) == []
        again = runner.invoke(app, ["deploy", "sagemaker", "--delete"])
        assert again.exit_code == 0 and "0 deleted." in again.output, again.output
    # the lab's SageMaker not running (it is not started for a delete): it holds nothing, and the command says so
    port = free_port()
    with isolated_environment(settings.model_copy(update={"sagemaker_emulator_port": port})):
        stopped = runner.invoke(app, ["deploy", "sagemaker", "--delete"])
    assert stopped.exit_code == 0, stopped.output
    text = " ".join(stopped.output.split())
    assert f"the lab's SageMaker is not running at http://127.0.0.1:{port}" in text
    assert f"absent model data s3://{settings.model_bucket}/" in text and "0 deleted." in text
    assert not stack.healthy(f"http://127.0.0.1:{port}{sagemaker.HEALTH_PATH}")


def aws_env(tmp_path) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    """The environment of someone on real AWS (eu-west-1), with keys that would never be sent anywhere."""
    import os

    empty = tmp_path / "empty"
    empty.write_text("")
    env: dict[str, str | None] = {name: None for name in os.environ if name.startswith(("AWS_", "LAB_"))}
    env.update(
        AWS_CONFIG_FILE=str(empty),
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        AWS_ACCESS_KEY_ID="AKIAEXAMPLEEXAMPLE00",
        AWS_SECRET_ACCESS_KEY="not-a-real-secret",
        AWS_REGION="eu-west-1",
        AWS_DEFAULT_REGION="eu-west-1",
        AWS_EC2_METADATA_DISABLED="true",
        LAB_STATE_DIR=str(tmp_path / "lab"),
    )
    return env


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every request botocore would send fails the test (and is recorded); so do deploying and starting the lab's
    SageMaker."""
    from botocore.httpsession import URLLib3Session

    sent: list[str] = []

    def send(self, request):  # type: ignore[no-untyped-def]
        sent.append(request.url)
        raise AssertionError(f"an AWS request was sent: {request.url}")

    def reached(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("reached sagemaker")

    monkeypatch.setattr(URLLib3Session, "send", send)
    for name in ("deploy", "ensure_emulator", "delete_deployment"):
        monkeypatch.setattr(sagemaker, name, reached)
    get_settings.cache_clear()
    yield sent
    get_settings.cache_clear()


def test_cli_refuses_a_real_endpoint_without_yes(tmp_path, no_network: list[str]) -> None:  # type: ignore[no-untyped-def]
    from mlops_lab.cli import app

    runner, env = CliRunner(), aws_env(tmp_path)
    refused = runner.invoke(app, ["deploy", "sagemaker"], env=env)
    assert refused.exit_code == 1, refused.output
    assert "This creates a real SageMaker endpoint (ml.m5.large, eu-west-1)" in " ".join(refused.output.split())
    assert refused.output.strip().splitlines()[-1] == (
        "Refused to create a billed SageMaker endpoint without confirmation (no terminal to ask on): "
        "run again with --yes."
    )
    deleting = runner.invoke(app, ["deploy", "sagemaker", "--delete"], env=env)
    assert deleting.exit_code == 1, deleting.output
    assert "Refused to delete the SageMaker endpoint without confirmation" in deleting.output
    assert no_network == []  # not even STS: refused before any call
    # --yes (or a yes at a terminal) goes on to the deploy (stubbed here)
    for args, answer in ((["--yes"], None), ([], "y\n"), (["--delete"], "y\n")):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("mlops_lab.cli.deploy._interactive", lambda asked=answer is not None: asked)
            went_on = runner.invoke(app, ["deploy", "sagemaker", *args], env=env, input=answer)
        assert went_on.exit_code != 0 and "reached sagemaker" in went_on.output, (args, went_on.output)
    # Once confirmed, the command says where it talks to (its one STS call), and only then deploys.
    assert no_network and {url.split("/")[2] for url in no_network} == {"sts.eu-west-1.amazonaws.com"}
    no_network.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mlops_lab.cli.deploy._interactive", lambda: True)
        declined = runner.invoke(app, ["deploy", "sagemaker"], env=env, input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output and "reached" not in declined.output
    assert no_network == []


def test_teardown_removes_the_deployment_and_what_it_needs(
    mlflow_lab: Lab, champion: training.LoggedVersion, sagemaker_url: str
) -> None:
    """`mlops-lab teardown` after `deploy sagemaker` (the issue's own finding): the endpoint, its config and model,
    the model data, the SageMaker role and the image repository go, and the check asks SageMaker (the lab's) itself."""
    from mlops_lab.teardown import teardown

    port = int(sagemaker_url.rsplit(":", 1)[1])
    settings = mlflow_lab.settings.model_copy(update={"prefix": "lab-sm-gone", "sagemaker_emulator_port": port})
    aws = mlflow_lab.aws
    ensure_bucket(aws, settings.model_bucket, settings.resource_tags)  # as bootstrap makes it: tagged, the lab's
    deployed = sagemaker.deploy(settings, aws, model_uri=champion.model_uri, sagemaker_url=sagemaker_url, timeout_s=60)

    report = teardown(settings, aws)
    deleted = {(c.kind, c.name) for c in report.changes if c.action == "deleted"}
    assert {
        ("SageMaker endpoint", settings.sagemaker_endpoint),
        ("endpoint config", deployed.endpoint_config),
        ("SageMaker model", deployed.model),
        ("model data", deployed.model_data),
        ("role", settings.sagemaker_role_name),
        ("ecr repository", settings.sagemaker_repository),
        ("bucket", settings.model_bucket),
    } <= deleted, report.changes
    (check,) = [c for c in report.checks if c.service == "SageMaker"]
    assert check.checked and not check.left and not check.note, check
    assert report.complete, (report.left, report.unchecked)
    assert sagemaker.remaining(settings, aws, sagemaker_url=sagemaker_url) == []
