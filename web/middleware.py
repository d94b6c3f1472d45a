"""The request's envelope (pure ASGI, no extra task per request): its id, its size limit, its
log line, and a JSON 500 for anything unexpected.

* Request id: a sane incoming `X-Request-Id` (1-128 of `A-Za-z0-9._:-`) is kept, anything else
  is replaced by a fresh one; it is bound to structlog's context for every line logged while
  the request runs, and sent back in `X-Request-Id`.
* Size: a request whose `Content-Length` exceeds the limit is answered 413 before anything
  reads it; a body sent without a length (chunked) is counted as it is read (web/body.py).
* Log line: `http.request` for the requests CONTACTO_WEB_ACCESS_LOG selects (by default those
  answered >= 400 or slower than CONTACTO_WEB_SLOW_REQUEST_MS: a line per request is 40 % of
  the CPU of a GET of an account).
* Errors: an exception nothing else handled becomes `500 {"error": {"code": "internal"}}`,
  logged once with its traceback and the request id.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Final

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.settings import AccessLog
from web.errors import error_response

log = structlog.get_logger("web.http")

REQUEST_ID_HEADER: Final = "X-Request-Id"
_REQUEST_ID_RE: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's request id if it is sane, else a new one (32 hex digits)."""
    for name, value in headers:
        if name == b"x-request-id":
            if _REQUEST_ID_RE.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared body length; -1 when the header is there but not a number."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() and len(value) <= 18 else -1
    return None


class RequestContext:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        access_log: AccessLog,
        slow_request_ms: float = 250.0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        self.slow_request_ms = slow_request_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = request_id_from(headers)
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode("ascii"))
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            length = content_length(headers)
            if length is not None and (length < 0 or length > self.max_body_bytes):
                await self._refuse_size(length, send_with_id, scope, receive)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error("http.unhandled_error", exc_info=exc)
            if status:
                raise  # the response has begun: all that can be done is to cut it
            response = error_response(
                500, "internal", "internal error; the request id identifies it in logs"
            )
            await response(scope, receive, send_with_id)
        finally:
            if self.access_log is not AccessLog.OFF:
                self._log(scope, status, started)
            structlog.contextvars.clear_contextvars()

    async def _refuse_size(self, length: int, send: Send, scope: Scope, receive: Receive) -> None:
        if length < 0:
            response = error_response(400, "bad_request", "Content-Length is not a number")
        else:
            response = error_response(
                413,
                "payload_too_large",
                f"the body is {length} bytes; at most {self.max_body_bytes} are accepted",
                # The body is not read: the connection cannot be reused for another request.
                headers={"Connection": "close"},
            )
        await response(scope, receive, send)

    def _log(self, scope: Scope, status: int, started: float) -> None:
        duration_ms = (time.perf_counter() - started) * 1000
        status = status or 500
        if (
            self.access_log is AccessLog.ERRORS
            and status < 400
            and duration_ms < self.slow_request_ms
        ):
            return
        fields: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round(duration_ms, 2),
        }
        # request_id, and `caller` once a token was accepted: bound in structlog's context.
        log.info("http.request", **fields)
