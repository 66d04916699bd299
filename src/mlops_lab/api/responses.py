"""What the routes answer with: pre-encoded JSON responses and the documented error responses."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from mlops_lab.api.schemas import ErrorResponse

# The error responses a route documents, by status code (each route picks the ones it can answer).
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "API key required (LAB_API_KEY is set)"},
    413: {
        "model": ErrorResponse,
        "description": "body larger than LAB_API_MAX_BODY_BYTES or more rows than LAB_API_MAX_ROWS",
    },
    422: {"model": ErrorResponse, "description": "input does not match the model's schema; `loc` names the field"},
    503: {"model": ErrorResponse, "description": "no model loaded yet"},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: ERRORS[code] for code in codes}


class JSONBytes(Response):
    """A response whose body is already JSON bytes (no re-encoding, no per-request media type argument)."""

    media_type = "application/json"
