"""SageMaker's inference contract: ``POST /invocations`` and Batch Transform's ``GET /execution-parameters``. Its
``/ping`` is in ``ops`` with the other health checks.

``/invocations`` takes CSV (``text/csv``: a header is optional, SageMaker sends none), JSON Lines
(``application/jsonlines``, ``application/x-jsonlines``: an object or an array per line) or JSON (records, or the
wrappers SageMaker and mlflow clients send), and answers as ``Accept`` asks: CSV or JSON Lines, one line per record
and no header (what a transform job's ``.out`` files and ``JoinSource=Input`` need), else ``/predict``'s JSON. Any
input format goes with any answer format.

Batches are bounded by bytes, as on AWS: the body may be a full ``MaxPayloadInMB`` payload (larger than
``LAB_API_MAX_BODY_BYTES`` by default), read and scored ``CHUNK_ROWS`` records at a time. Inside a transform job's
container (``SAGEMAKER_BATCH=true``) the payload is the only bound; elsewhere ``LAB_API_MAX_ROWS`` still applies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic_core import to_json

from mlops_lab.api import payloads
from mlops_lab.api.deps import SnapshotDep, read_body_limited
from mlops_lab.api.model_store import Snapshot
from mlops_lab.api.responses import JSONBytes, error_responses
from mlops_lab.api.schemas import ErrorResponse
from mlops_lab.errors import LabError

router = APIRouter()

MB = 1024 * 1024  # MaxPayloadInMB counts bytes in MiB, as the lab's transform runner does
MAX_PAYLOAD_MB = 100  # API_CreateTransformJob: MaxPayloadInMB is at most 100
# Bodies up to this size are answered on the event loop; larger ones (more than about a hundred course rows) are
# parsed and scored in the threadpool, so a 6 MB batch does not hold up /ping or the next request.
INLINE_BYTES = 16 * 1024

CSV = "text/csv"
JSON = "application/json"
JSON_LINES = ("application/jsonlines", "application/x-jsonlines")


class BatchEnvironmentError(LabError):
    """A ``SAGEMAKER_*`` batch variable the container cannot use (not a number, out of AWS's range)."""


@dataclass(frozen=True)
class ExecutionParameters:
    """What ``GET /execution-parameters`` answers, from the container's environment (SageMaker sets the variables
    in a transform job's container; elsewhere they are unset and the defaults apply)."""

    # Two requests in flight: one scored by ONNX Runtime (outside the GIL) while the next is parsed. More would only
    # queue in this one process, each holding a payload: the worker's memory grows with it, its speed does not.
    max_concurrent_transforms: int = 2
    batch_strategy: str = "MultiRecord"
    max_payload_mb: int = 6  # AWS's default
    batch: bool = False  # SAGEMAKER_BATCH=true: a transform job's container

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ExecutionParameters:
        environ = os.environ if environ is None else environ
        concurrency = _integer(environ, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", 0, None)
        payload = _integer(environ, "SAGEMAKER_MAX_PAYLOAD_IN_MB", 0, MAX_PAYLOAD_MB)
        return cls(
            max_concurrent_transforms=concurrency or cls.max_concurrent_transforms,  # 0: SageMaker asks us
            batch_strategy=_strategy(environ.get("SAGEMAKER_BATCH_STRATEGY", "")) or cls.batch_strategy,
            max_payload_mb=cls.max_payload_mb if payload is None else payload,
            batch=environ.get("SAGEMAKER_BATCH", "").strip().lower() == "true",
        )

    def body_limit(self, configured: int) -> int:
        """``/invocations``' body limit: a full payload always fits (0, chunked streaming, means AWS's largest)."""
        return max(configured, (self.max_payload_mb or MAX_PAYLOAD_MB) * MB)

    def to_json(self) -> dict[str, Any]:
        return {
            "MaxConcurrentTransforms": self.max_concurrent_transforms,
            "BatchStrategy": self.batch_strategy,
            "MaxPayloadInMB": self.max_payload_mb,
        }


def _integer(environ: Mapping[str, str], name: str, low: int, high: int | None) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise BatchEnvironmentError(f"{name}={text!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        bounds = f"{low} to {high}" if high is not None else f"{low} or more"
        raise BatchEnvironmentError(f"{name}={value} is out of range: expected {bounds}")
    return value


def _strategy(text: str) -> str | None:
    """AWS's BatchStrategy from the variable, however it is spelled (``MULTI_RECORD``, ``MultiRecord``...)."""
    if not text.strip():
        return None
    key = text.strip().replace("_", "").replace("-", "").lower()
    for strategy in ("MultiRecord", "SingleRecord"):
        if key == strategy.lower():
            return strategy
    raise BatchEnvironmentError(f"SAGEMAKER_BATCH_STRATEGY={text!r}: expected MULTI_RECORD or SINGLE_RECORD")


@router.get(
    "/execution-parameters",
    tags=["sagemaker"],
    summary="Batch Transform's optional container parameters",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {"MaxConcurrentTransforms": 2, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 6}
                }
            },
            "description": "what the container handles best, from SAGEMAKER_MAX_CONCURRENT_TRANSFORMS, "
            "SAGEMAKER_BATCH_STRATEGY and SAGEMAKER_MAX_PAYLOAD_IN_MB (defaults 2, MultiRecord, 6)",
        }
    },
)
async def execution_parameters(request: Request) -> Response:
    return JSONBytes(to_json(request.app.state.execution.to_json()))


@router.post(
    "/invocations",
    tags=["sagemaker"],
    summary="SageMaker inference: text/csv (header optional), application/jsonlines or application/json",
    responses={
        200: {
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}},
                "text/csv": {"schema": {"type": "string"}},
                "application/jsonlines": {"schema": {"type": "string"}},
            },
            "description": "predictions: with `Accept: text/csv`, one line per record and no header, the batch "
            "output's columns: `prediction` (a label, or a regressor's value), then `probability_<class>` per class "
            "when the model gives them; with `Accept: application/jsonlines`, one object per record with those "
            "columns as keys; otherwise as `/predict` answers them",
        },
        406: {"model": ErrorResponse, "description": "an Accept this API cannot answer"},
        415: {"model": ErrorResponse, "description": "unsupported Content-Type"},
        **error_responses(401, 413, 422, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InvocationRequest"}},
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "<header row optional>\n<one row per record>",
                },
                "application/jsonlines": {
                    "schema": {"type": "string"},
                    "example": "<one JSON object (feature -> value) or array (model order) per line>",
                },
            },
        }
    },
)
async def invocations(request: Request, snapshot: SnapshotDep) -> Response:
    state = request.app.state
    execution: ExecutionParameters = state.execution
    content_type = _media_type(request.headers.get("content-type", JSON))
    answer_as = _answer_format(request.headers.get("accept", ""))
    if content_type not in (CSV, JSON, *JSON_LINES, "", "*/*"):
        raise HTTPException(
            415, f"unsupported Content-Type {content_type!r}: send text/csv, application/jsonlines or application/json"
        )
    limit = execution.body_limit(state.settings.api_max_body_bytes)
    try:
        body = await read_body_limited(request, limit)
    except HTTPException as exc:
        if exc.status_code != 413:
            raise
        raise HTTPException(
            413,
            f"request body over {limit} bytes: /invocations takes a MaxPayloadInMB payload ({execution.max_payload_mb}"
            " MB, SAGEMAKER_MAX_PAYLOAD_IN_MB) or LAB_API_MAX_BODY_BYTES, whichever is larger; send smaller batches",
        ) from None
    max_rows = None if execution.batch else snapshot.types.max_rows
    if len(body) > INLINE_BYTES:
        content, rows = await run_in_threadpool(answer, snapshot, body, content_type, answer_as, max_rows)
    else:
        content, rows = answer(snapshot, body, content_type, answer_as, max_rows)
    request.state.rows = rows
    request.state.model_version = snapshot.info.version
    return Response(content, media_type=answer_as)


def answer(
    snapshot: Snapshot, body: bytes, content_type: str, answer_as: str, max_rows: int | None
) -> tuple[bytes, int]:
    """Blocking: read ``body`` chunk by chunk, score each chunk, and render the answer; ``(content, rows)``."""
    if content_type == CSV:
        chunks = payloads.csv_chunks(snapshot, body, max_rows=max_rows)
    elif content_type in JSON_LINES:
        chunks = payloads.jsonlines_chunks(snapshot, body, max_rows=max_rows)
    else:
        records = payloads.invocation_json(snapshot, body)
        chunks = iter([(payloads.columns_from_records(snapshot, records), len(records), 1)])
    parts: list[Any] = []
    rows = 0
    for columns, count, first_row in chunks:
        prediction = snapshot.model.predict(columns, first_row=first_row)
        rows += count
        if answer_as == CSV:
            parts.append(payloads.predictions_csv(prediction).encode())
        elif answer_as in JSON_LINES:
            parts.append(payloads.predictions_jsonlines(prediction))
        else:
            parts.extend(prediction.records())
    if answer_as == JSON:
        return to_json({"model": snapshot.ref, "predictions": parts}, inf_nan_mode="null"), rows
    return b"".join(parts), rows


def _media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def _answer_format(accept: str) -> str:
    """The answer's media type: the first one ``Accept`` lists that this API writes (JSON when it says nothing or
    anything goes); 406 when it lists only others. Quality values are not weighed: SageMaker sends one type."""
    offered = [_media_type(item) for item in accept.split(",") if item.strip()]
    if not offered:
        return JSON
    for media in offered:
        if media in (CSV, JSON, *JSON_LINES):
            return media
        if media in ("*/*", "application/*"):
            return JSON
        if media == "text/*":
            return CSV
    raise HTTPException(
        406, f"cannot answer Accept {accept!r}: ask for text/csv, application/jsonlines or application/json"
    )
