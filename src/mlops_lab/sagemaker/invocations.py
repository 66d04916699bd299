"""Invocations: botocore's own request, delivered to a container's ``/invocations``.

moto records endpoints but runs no containers, so ``invoke_endpoint`` is exercised by sending the very request botocore
builds for it (``text/csv`` or ``application/json`` body, Content-Type, Accept) to a container's ``/invocations``:
the lab's API, or mlflow's scoring server (what the mlflow-pyfunc image runs). See ``forward_invocations``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from mlops_lab import stack
from mlops_lab.aws import default_session
from mlops_lab.sagemaker.control_plane import sagemaker_endpoint
from mlops_lab.settings import Settings


class _Body(io.BytesIO):
    """What botocore reads a response from (``read`` for streaming payloads, ``stream`` for the rest)."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


def forward_invocations(session: Any, container: httpx.Client, *, variant: str = "AllTraffic") -> Callable[[], None]:
    """Deliver every ``invoke_endpoint`` of ``session``'s sagemaker-runtime clients to ``container``'s /invocations.

    The request is the one botocore serialised (body bytes, Content-Type, Accept), as SageMaker's front end passes
    it to the container; the container's answer becomes the API response (Body, ContentType). Works for clients
    created from ``session`` after this call; ``session`` is a boto3 Session (``boto3._get_default_session()`` is
    the one mlflow's deployments client uses). Returns the function that undoes it.
    """
    from botocore.awsrequest import AWSResponse

    def send(request: Any, **_: Any) -> AWSResponse | None:
        if not request.url.split("?", 1)[0].endswith("/invocations"):
            return None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in headers.items()}
        body = request.body if isinstance(request.body, bytes) else (request.body or b"")
        if hasattr(body, "read"):
            body = body.read()
        answer = container.post("/invocations", content=body, headers=headers)
        response_headers = {
            "Content-Type": answer.headers.get("content-type", "application/json"),
            "x-Amzn-Invoked-Production-Variant": variant,
        }
        if answer.status_code >= 400:  # SageMaker reports a container error as ModelError (424)
            error = {
                "message": f'Received client error ({answer.status_code}) from primary with message "{answer.text}"',
                "OriginalStatusCode": answer.status_code,
            }
            return AWSResponse(
                request.url,
                424,
                {"Content-Type": "application/json", "x-amzn-ErrorType": "ModelError"},
                _Body(json.dumps(error).encode()),
            )
        return AWSResponse(request.url, 200, response_headers, _Body(answer.content))

    event = "before-send.sagemaker-runtime.InvokeEndpoint"
    session.events.register(event, send)
    return lambda: session.events.unregister(event, send)


def invoke_through_api(settings: Settings, endpoint: str, url: str) -> list[tuple[str, str]] | None:
    """Send a CSV and a JSON ``invoke_endpoint`` for ``endpoint`` (on moto at ``url``) to the lab API's
    /invocations; (content type, answer) each, or None when the API is not running."""
    from mlops_lab.synthetic import generate

    if not stack.healthy(settings.api_url + "/health"):
        return None
    session = default_session()
    sample = generate(3, seed=5, with_label=False)
    bodies = {
        "text/csv": sample.to_csv(index=False),
        "application/json": '{"dataframe_split": ' + sample.to_json(orient="split", index=False) + "}",
    }
    answers = []
    with httpx.Client(base_url=settings.api_url, timeout=30) as container, sagemaker_endpoint(url):
        forward_invocations(session, container)
        runtime = session.client("sagemaker-runtime")
        for content_type, body in bodies.items():
            answer = runtime.invoke_endpoint(
                EndpointName=endpoint, ContentType=content_type, Accept="application/json", Body=body.encode()
            )
            answers.append((content_type, answer["Body"].read().decode()))
    return answers
