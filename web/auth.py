"""Bearer tokens on every /v1 route: `Authorization: Bearer cbt_<selector>_<secret>`.

Missing, malformed, unknown, wrong and revoked tokens are all 401 with `WWW-Authenticate`
(RFC 6750); the caller is told only whether it sent no token, a malformed one or an invalid
one. A valid token without the route's scope is 403. The log line of a refusal names the
reason and, when the selector matched, the token's name: never the token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Final

import structlog
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.credentials.tokens import Caller, Refusal, authenticate
from web.errors import ApiError
from web.resources import resources

log = structlog.get_logger("web.auth")

BEARER: Final = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="cbt_<selector>_<secret>",
    description="A token from `contacto-billing api-tokens create NAME` (shown once).",
)
_CHALLENGE: Final = 'Bearer realm="contacto-billing"'


def _unauthorized(message: str, error: str | None = None) -> ApiError:
    challenge = _CHALLENGE if error is None else f'{_CHALLENGE}, error="{error}"'
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


def require(scope: str) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the request's caller, who must hold `scope`."""

    async def caller(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> Caller:
        if credentials is None:
            if request.headers.get("authorization") is None:
                log.info("auth.refused", reason="missing")
                raise _unauthorized("no bearer token: send Authorization: Bearer <token>")
            log.info("auth.refused", reason="not_bearer")
            raise _unauthorized(
                "the Authorization header is not `Bearer <token>`", "invalid_request"
            )
        async with resources(request).connection() as conn:
            result = await authenticate(conn, credentials.credentials)
        if result.caller is None:
            reason = result.refusal or Refusal.UNKNOWN
            log.info("auth.refused", reason=reason.value, holder=result.name)
            if reason is Refusal.MALFORMED:
                raise _unauthorized(
                    "malformed bearer token (expected cbt_<selector>_<secret>)", "invalid_token"
                )
            raise _unauthorized("invalid or revoked token", "invalid_token")
        request.state.caller = result.caller
        structlog.contextvars.bind_contextvars(caller=result.caller.name)
        if scope not in result.caller.scopes:
            log.info("auth.forbidden", scope=scope)
            raise ApiError(
                403,
                "forbidden",
                f"token {result.caller.name!r} lacks the scope {scope}",
                headers={
                    "WWW-Authenticate": f'{_CHALLENGE}, error="insufficient_scope", scope="{scope}"'
                },
            )
        return result.caller

    return caller
