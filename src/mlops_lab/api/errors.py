"""Exception handlers: the payload's and the inference core's input errors, as JSON with their status codes."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from mlops_lab.api.payloads import PayloadError
from mlops_lab.inference import InputError


async def payload_error(request: Request, exc: PayloadError) -> Response:
    request.state.error = exc.status
    return JSONResponse(exc.content(), status_code=exc.status)


async def input_error(request: Request, exc: InputError) -> Response:
    report = exc.to_dict()
    return JSONResponse({"detail": report.pop("reason"), **report}, status_code=422)


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PayloadError, payload_error)  # type: ignore[arg-type]
    app.add_exception_handler(InputError, input_error)  # type: ignore[arg-type]
