"""Every error the API sends: `{"error": {"code", "message"[, "details"]}}`, never a traceback.

Refusals raise `ApiError`; FastAPI's own (unknown route, wrong method, invalid query or path
parameters) and anything unexpected are turned into the same shape by the handlers below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from common.db.engine import CONNECTION_ERRORS
from common.db.unavailable import DatabaseUnavailable
from web.responses import JSONBytes

log = structlog.get_logger("web.errors")

# The `code` of each status FastAPI or Starlette may raise by themselves.
_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}
# Seconds a client should wait before retrying after a 503.
RETRY_AFTER_S: Final = "1"


class ApiError(Exception):
    """A refusal with its HTTP status, a stable machine-readable code and a one-line message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


def error_body(
    code: str, message: str, details: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = [dict(d) for d in details]
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return JSONBytes(error_body(code, message, details), status_code=status, headers=headers)


def unavailable(what: str) -> ApiError:
    return ApiError(
        503,
        "unavailable",
        f"{what} is not answering; retry shortly",
        headers={"Retry-After": RETRY_AFTER_S},
    )


def _location(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status, exc.code, exc.message, details=exc.details, headers=exc.headers
    )


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route"
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    """Query and path parameters FastAPI refused; the input itself is never echoed."""
    assert isinstance(exc, RequestValidationError)
    details = [
        {"location": _location(e.get("loc", ())), "reason": str(e.get("msg", "invalid"))}
        for e in exc.errors()
    ]
    first = details[0] if details else {"location": "request", "reason": "invalid"}
    return error_response(
        422, "invalid_request", f"{first['location']}: {first['reason']}", details=details
    )


async def _unavailable(_request: Request, exc: Exception) -> Response:
    """PostgreSQL down or not reachable mid-request: the client may retry."""
    log.warning("http.dependency_unavailable", error=type(exc).__name__, detail=str(exc)[:200])
    error = unavailable("PostgreSQL")
    return error_response(503, error.code, error.message, headers=error.headers)


async def _unexpected(_request: Request, exc: Exception) -> Response:
    # Logged with its traceback (the request id is bound); the client learns nothing more.
    log.error("http.unhandled_error", exc_info=exc)
    return error_response(500, "internal", "internal error; the request id identifies it in logs")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DatabaseUnavailable, _unavailable)
    for error in CONNECTION_ERRORS:
        if issubclass(error, Exception):
            app.add_exception_handler(error, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
