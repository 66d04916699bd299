"""Invocations: `deploy sagemaker`'s round trip, boto3's own ``invoke_endpoint`` sent to the deployed endpoint (the
lab's SageMaker serves it with the endpoint's model offline; SageMaker does on AWS)."""

from __future__ import annotations

from mlops_lab.aws import Aws
from mlops_lab.sagemaker.control_plane import sagemaker_endpoint


def invoke_endpoint(aws: Aws, endpoint: str, url: str | None) -> list[tuple[str, str]]:
    """Send a CSV and a JSON ``invoke_endpoint`` for ``endpoint`` (at ``url``: the lab's SageMaker; None: where the
    SDK resolves it); (content type, answer) each."""
    from mlops_lab.synthetic import generate

    sample = generate(3, seed=5, with_label=False)
    bodies = {
        "text/csv": sample.to_csv(index=False),
        "application/json": '{"dataframe_split": ' + sample.to_json(orient="split", index=False) + "}",
    }
    with sagemaker_endpoint(url):
        runtime = aws.session.client("sagemaker-runtime", region_name=aws.region)
    answers = []
    for content_type, body in bodies.items():
        answer = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType=content_type, Accept="application/json", Body=body.encode()
        )
        answers.append((content_type, answer["Body"].read().decode()))
    return answers
