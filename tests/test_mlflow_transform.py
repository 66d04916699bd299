"""mlflow's own `deploy_transform_job`, unchanged, against the lab's SageMaker: it uploads the registered model,
creates the SageMaker model and the transform job, and polls until Completed; the `.out` holds the model's answers."""

from __future__ import annotations

from collections.abc import Iterator

import mlflow.sagemaker
import pytest

from mlops_lab import registry, sagemaker, training
from mlops_lab.inference import TabularModel
from mlops_lab.synthetic import generate
from tests.support import Lab, running_lab


@pytest.fixture(scope="module")
def lab_sagemaker(mlflow_lab: Lab) -> Iterator[Lab]:
    with running_lab(mlflow_lab.settings, [sagemaker.SERVICE_NAME]) as lab:
        yield lab


def test_mlflow_deploy_transform_job_runs_to_completed(lab_sagemaker: Lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings, aws = lab_sagemaker.settings, lab_sagemaker.aws
    logged = training.train_and_log(settings, rows=1500, seed=12, run_name="transform")
    model_uri = logged.model_uri
    frame = generate(120, seed=13, with_label=False)
    s3 = aws.client("s3")
    s3.put_object(
        Bucket=settings.input_bucket, Key="mlflow-transform/in/rows.csv", Body=frame.to_csv(index=False, header=False)
    )
    registry.client(settings)  # mlflow's client reads the model through the session's tracking server
    with sagemaker.sagemaker_endpoint(settings.sagemaker_emulator_url):  # the profile's `services` section does this
        mlflow.sagemaker.deploy_transform_job(
            job_name="mlflow-transform",
            model_uri=model_uri,
            s3_input_data_type="S3Prefix",
            s3_input_uri=f"s3://{settings.input_bucket}/mlflow-transform/in/",
            content_type="text/csv",
            s3_output_path=f"s3://{settings.output_bucket}/mlflow-transform/out",
            execution_role_arn="arn:aws:iam::000000000000:role/lab-test-sagemaker",
            bucket=settings.model_bucket,
            image_url="000000000000.dkr.ecr.us-east-1.amazonaws.com/mlflow-pyfunc:3.17.2",
            region_name=aws.region,
            instance_type="ml.m5.large",
            instance_count=1,
            synchronous=True,
            timeout_seconds=120,
        )
    out = s3.get_object(Bucket=settings.output_bucket, Key="mlflow-transform/out/rows.csv.out")["Body"].read()
    labels = [line.split(",")[0] for line in out.decode().splitlines()]
    served = TabularModel(registry.version_onnx(settings, logged.version))
    assert labels == served.predict_records(frame.to_dict(orient="records")).label_texts()
