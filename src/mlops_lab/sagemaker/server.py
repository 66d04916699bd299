"""The lab's SageMaker: one loopback port answering the ``sagemaker`` and ``sagemaker-runtime`` APIs as AWS does.

moto keeps the control plane's records (models, endpoint configs, endpoints...), in this process: its Flask app is
mounted behind an ASGI adapter, no second port, no extra hop. The lab adds what moto lacks:

- ``InvokeEndpoint`` (``POST /endpoints/<name>/invocations``) answered by the endpoint's model: its ``ModelDataUrl``
  unpacked and served by the lab's serving code in a worker process (``workers.py``), one per model, started on
  first use. A variant is picked by ``TargetVariant``, else by the variants' weights.
- ``UpdateEndpoint``: the endpoint moves to another config (``Updating`` → ``InService``; on failure it stays on
  the old one, with a ``FailureReason``, as AWS does).
- Transform jobs that really run (``transform_jobs.py``): ``Create``/``Describe``/``List``/``StopTransformJob``.

Everything is behind the lab's guard (``mlops_lab.guard``): another web page gets nothing through this port either.
The AWS profile ``mlops-lab`` routes ``sagemaker`` and ``sagemaker-runtime`` here (its ``services`` section), so any
boto3, AWS CLI or mlflow client with that profile reaches it unchanged.

``python -m mlops_lab.sagemaker.server`` serves it (the lab's settings from ``LAB_*``; S3 through the SDK's own
configuration, which the lab's service definition points at the emulator).
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool

from mlops_lab import guard
from mlops_lab.aws import Aws, default_session
from mlops_lab.errors import LabError
from mlops_lab.sagemaker.control_plane import HEALTH_PATH
from mlops_lab.sagemaker.records import AwsError, MotoRecords, primary_container, validation
from mlops_lab.sagemaker.transform_jobs import TransformJobs
from mlops_lab.sagemaker.workers import EndpointWorkers, fetch_model_data
from mlops_lab.settings import Settings

log = logging.getLogger("mlops_lab.sagemaker")

INVOKE_PATH = re.compile(r"/endpoints/(?P<name>[^/]+)/invocations")
TARGET_PREFIX = "SageMaker."
INVOKE_TIMEOUT_S = 60.0  # AWS's own limit on an InvokeEndpoint answer
RUNTIME_HEADERS = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes", "x-amzn-sagemaker-inference-id")


def pick_variant(variants: list[dict[str, Any]], target: str | None, rng: random.Random) -> dict[str, Any]:
    """The variant that answers: ``TargetVariant`` when given (AWS's ValidationError when there is no such variant),
    else one drawn by the variants' ``InitialVariantWeight`` (AWS's default weight: 1)."""
    if target:
        for variant in variants:
            if variant.get("VariantName") == target:
                return variant
        raise validation(f"Variant {target} not found for this endpoint.")
    weights = [float(variant.get("CurrentWeight", variant.get("InitialVariantWeight", 1.0))) for variant in variants]
    if not any(weights):
        raise validation("Every variant of this endpoint has weight 0.")
    return rng.choices(variants, weights=weights)[0]


class SageMakerServer:
    """The ASGI app (behind :class:`mlops_lab.guard.Guard`: see :func:`create_app`)."""

    def __init__(self, settings: Settings, aws: Aws | None = None) -> None:
        from a2wsgi import WSGIMiddleware
        from moto.moto_server.werkzeug_app import create_backend_app

        self.settings = settings
        self.aws = aws or Aws(default_session())
        self.records = MotoRecords(self.aws.region)
        self.moto = WSGIMiddleware(create_backend_app("sagemaker"))
        self.endpoint_workers = EndpointWorkers(settings)
        self._rng = random.Random()
        self._http = httpx.Client(timeout=INVOKE_TIMEOUT_S, limits=httpx.Limits(max_connections=64))
        self.transform_jobs = TransformJobs(settings, self.aws, self.records)
        self.actions = {
            "UpdateEndpoint": self.update_endpoint,
            "CreateTransformJob": self.transform_jobs.create,
            "DescribeTransformJob": self.transform_jobs.describe,
            "ListTransformJobs": self.transform_jobs.list,
            "StopTransformJob": self.transform_jobs.stop,
        }

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await self.moto(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == HEALTH_PATH:
            await _respond(send, 200, b'{"status": "ok"}', "application/json")
            return
        invoke = INVOKE_PATH.fullmatch(path)
        if invoke and method == "POST":
            await self._answer(send, self.invoke_endpoint, invoke["name"], await _body(receive), _headers(scope))
            return
        target = _headers(scope).get("x-amz-target", "")
        action = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else None
        if method == "POST" and action in self.actions:
            body = await _body(receive)
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                await _respond_error(send, AwsError("SerializationException", "the request body is not JSON"))
                return
            await self._answer(send, self._control, self.actions[action], request)
            return
        await self.moto(scope, receive, send)

    async def _answer(self, send: Any, function: Any, *args: Any) -> None:
        try:
            status, body, headers = await run_in_threadpool(function, *args)
        except AwsError as error:
            await _respond_error(send, error)
            return
        except Exception as error:
            log.exception("the lab's SageMaker failed a request")
            await _respond_error(send, AwsError("InternalFailure", f"{type(error).__name__}: {error}", 500))
            return
        await _respond(send, status, body, headers.pop("content-type", "application/json"), headers)

    @staticmethod
    def _control(action: Any, request: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
        answer = action(request)
        return 200, json.dumps(answer, default=_json_default).encode(), {"content-type": "application/x-amz-json-1.1"}

    # -- sagemaker-runtime ----------------------------------------------------------------------------------------

    def invoke_endpoint(self, name: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        backend, endpoint = self.records.endpoint(name)
        if endpoint.endpoint_status not in ("InService", "Updating"):
            raise validation(f"Endpoint {name} is not in service (its status is {endpoint.endpoint_status}).")
        config = self.records.endpoint_config(backend, endpoint.endpoint_config_name)
        variant = pick_variant(config.production_variants, headers.get("x-amzn-sagemaker-target-variant"), self._rng)
        model = self.records.model(backend, variant["ModelName"])
        container = primary_container(model)
        try:
            model_dir = fetch_model_data(self.settings, self.aws, container.get("ModelDataUrl", ""))
            worker = self.endpoint_workers.get(model_dir, container.get("Environment") or {})
        except LabError as error:
            raise AwsError(
                "ModelError", f"The primary container for {variant['VariantName']} failed: {error}", 424
            ) from error
        forwarded = {key: value for key, value in headers.items() if key in RUNTIME_HEADERS}
        try:
            answer = self._http.post(worker.url + "/invocations", content=body, headers=forwarded)
        except httpx.HTTPError as error:
            raise AwsError("ModelError", f"The primary container did not answer: {error}", 424) from error
        variant_header = {"x-amzn-invoked-production-variant": variant["VariantName"]}
        if answer.status_code >= 400:
            raise AwsError(
                "ModelError",
                f'Received client error ({answer.status_code}) from primary with message "{answer.text}". See '
                f"{worker.log_path} for the container's log.",
                424,
                OriginalStatusCode=answer.status_code,
                OriginalMessage=answer.text,
                LogStreamArn=str(worker.log_path),
            )
        content_type = answer.headers.get("content-type", "application/octet-stream")
        return 200, answer.content, {"content-type": content_type, **variant_header}

    # -- control plane: what moto lacks ---------------------------------------------------------------------------

    def update_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        """Move an endpoint to another config: ``Updating`` now, ``InService`` on the new config once its models
        answer, or back on the old one with a ``FailureReason`` when they cannot."""
        name, config_name = request.get("EndpointName"), request.get("EndpointConfigName")
        if not name or not config_name:
            raise validation("EndpointName and EndpointConfigName are required.")
        backend, endpoint = self.records.endpoint(name)
        config = self.records.endpoint_config(backend, config_name)
        if endpoint.endpoint_status == "Updating":
            raise validation(f'Cannot update in-progress endpoint "{endpoint.arn}".')
        endpoint.endpoint_status = "Updating"
        endpoint.last_modified_time = _now()
        threading.Thread(target=self._update, args=(backend, endpoint, config), daemon=True).start()
        return {"EndpointArn": endpoint.arn}

    def _update(self, backend: Any, endpoint: Any, config: Any) -> None:
        try:
            for variant in config.production_variants:
                container = primary_container(self.records.model(backend, variant["ModelName"]))
                model_dir = fetch_model_data(self.settings, self.aws, container.get("ModelDataUrl", ""))
                self.endpoint_workers.get(model_dir, container.get("Environment") or {})
        except (LabError, AwsError) as error:
            endpoint.failure_reason = f"Failed to update the endpoint to {config.endpoint_config_name}: {error}"
        else:
            endpoint.endpoint_config_name = config.endpoint_config_name
            endpoint.production_variants = endpoint._process_production_variants(config.production_variants)
            endpoint.failure_reason = None
        endpoint.endpoint_status = "InService"
        endpoint.last_modified_time = _now()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await run_in_threadpool(self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        self.transform_jobs.close()
        self.endpoint_workers.stop_all()
        self._http.close()


def _now() -> datetime:
    return datetime.now(UTC)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _headers(scope: Any) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send: Any, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
) -> None:
    raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(key.encode(), value.encode()) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _respond_error(send: Any, error: AwsError) -> None:
    await _respond(send, error.status, error.body(), "application/x-amz-json-1.1", {"x-amzn-errortype": error.code})


def create_app(settings: Settings, aws: Aws | None = None) -> guard.Guard:
    """The server behind the guard: the lab's own origins only, loopback Host names (and the configured ones)."""
    return guard.Guard(
        SageMakerServer(settings, aws),
        origins=guard.lab_origins(settings),
        hosts=guard.lab_hosts(settings),
    )


def main() -> None:
    import uvicorn

    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per mini-batch would bury the jobs' own
    uvicorn.run(
        create_app(settings),
        host=settings.emulator_host,
        port=settings.sagemaker_emulator_port,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
