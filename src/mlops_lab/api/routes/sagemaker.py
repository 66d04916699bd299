"""SageMaker's inference contract: ``POST /invocations`` (CSV or JSON in, JSON or CSV out). Its ``/ping`` is in
``ops`` with the other health checks."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic_core import to_json

from mlops_lab.api import payloads
from mlops_lab.api.deps import BodyDep, SnapshotDep
from mlops_lab.api.model_store import Snapshot
from mlops_lab.api.predict import score
from mlops_lab.api.responses import JSONBytes, error_responses
from mlops_lab.api.schemas import ErrorResponse
from mlops_lab.inference import Prediction

router = APIRouter()


@router.post(
    "/invocations",
    tags=["sagemaker"],
    summary="SageMaker inference: text/csv (header optional) or application/json",
    responses={
        200: {
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}},
                "text/csv": {"schema": {"type": "string"}},
            },
            "description": "predictions, as `/predict` answers them; with `Accept: text/csv`, the batch output's "
            "columns: `prediction` (a label, or a regressor's value), then `probability_<class>` per class when the "
            "model gives them",
        },
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
            },
        }
    },
)
async def invocations(request: Request, snapshot: SnapshotDep, body: BodyDep) -> Response:
    content_type = request.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
    if content_type == "text/csv":
        columns, rows, first_row = payloads.invocation_csv(snapshot, body)
        prediction = await score(snapshot, columns, rows, first_row)
    elif content_type in ("application/json", "", "*/*"):
        records = payloads.invocation_json(snapshot, body)
        rows = len(records)
        prediction = await score(snapshot, payloads.columns_from_records(snapshot, records), rows)
    else:
        raise HTTPException(415, f"unsupported Content-Type {content_type!r}: send text/csv or application/json")
    request.state.rows = rows
    request.state.model_version = snapshot.info.version
    if "text/csv" in request.headers.get("accept", ""):
        return Response(payloads.predictions_csv(snapshot.model, prediction), media_type="text/csv")
    return JSONBytes(_predictions_json(snapshot, prediction))


def _predictions_json(snapshot: Snapshot, prediction: Prediction) -> bytes:
    return to_json({"model": snapshot.ref, "predictions": prediction.records()}, inf_nan_mode="null")
