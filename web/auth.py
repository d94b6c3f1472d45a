"""Bearer tokens on every /v1 route: `Authorization: Bearer cbt_<selector>_<secret>`.

Missing, malformed, unknown, wrong and revoked tokens are all 401 with `WWW-Authenticate`
(RFC 6750); the caller is told only whether it sent no token, a malformed one or an invalid
one. A valid token without the route's scope is 403. The log line of a refusal names the
reason and, when the selector matched, the token's name: never the token.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg
import structlog
from fastapi import Request
from fastapi.security import HTTPBearer

from common.credentials.tokens import Caller, Refusal, authenticate
from web.errors import ApiError
from web.resources import resources

log = structlog.get_logger("web.auth")

_CHALLENGE: Final = 'Bearer realm="contacto-billing"'
SCHEME_DESCRIPTION: Final = (
    "A token from `contacto-billing api-tokens create NAME` (shown once); scopes "
    "accounts:read (GET /v1/accounts/…) and usage:write (POST /v1/usage)."
)


def _unauthorized(message: str, error: str | None = None) -> ApiError:
    challenge = _CHALLENGE if error is None else f'{_CHALLENGE}, error="{error}"'
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


def bearer_credentials(header: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive), else None."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def _refuse_missing(header: str | None) -> ApiError:
    if header is None:
        log.info("auth.refused", reason="missing")
        return _unauthorized("no bearer token: send Authorization: Bearer <token>")
    log.info("auth.refused", reason="not_bearer")
    return _unauthorized("the Authorization header is not `Bearer <token>`", "invalid_request")


async def authenticated(conn: asyncpg.Connection[Any], presented: str) -> Caller:
    """The caller `presented` belongs to: else 401 (as ApiError)."""
    result = await authenticate(conn, presented)
    if result.caller is None:
        reason = result.refusal or Refusal.UNKNOWN
        log.info("auth.refused", reason=reason.value, holder=result.name)
        if reason is Refusal.MALFORMED:
            raise _unauthorized(
                "malformed bearer token (expected cbt_<selector>_<secret>)", "invalid_token"
            )
        raise _unauthorized("invalid or revoked token", "invalid_token")
    return result.caller


def admit(request: Request, caller: Caller, scope: str) -> Caller:
    """`caller`, if it holds `scope`: else 403 (as ApiError)."""
    request.state.caller = caller
    structlog.contextvars.bind_contextvars(caller=caller.name)
    if scope not in caller.scopes:
        log.info("auth.forbidden", scope=scope)
        raise ApiError(
            403,
            "forbidden",
            f"token {caller.name!r} lacks the scope {scope}",
            headers={
                "WWW-Authenticate": f'{_CHALLENGE}, error="insufficient_scope", scope="{scope}"'
            },
        )
    return caller


class BearerToken(HTTPBearer):
    """A router's dependency: every route of the router needs a token with `scope`.

    An HTTPBearer, so that FastAPI documents the scheme on each route; called with the
    request alone (no sub-dependency: the check is on every request of the hot path), it
    checks the token on a connection of its own, returned at once (a route that reads a body
    must not hold one while a slow client uploads)."""

    def __init__(self, scope: str) -> None:
        super().__init__(
            auto_error=False,
            scheme_name="bearer",
            bearerFormat="cbt_<selector>_<secret>",
            description=SCHEME_DESCRIPTION,
        )
        self.scope = scope

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        header = request.headers.get("authorization")
        presented = bearer_credentials(header)
        if presented is None:
            raise _refuse_missing(header)
        found = resources(request)
        caller = found.tokens.get(presented)
        if caller is None:
            generation = found.tokens.generation
            async with found.connection() as conn:
                caller = await authenticated(conn, presented)
            found.tokens.put(presented, caller, generation)
        return admit(request, caller, self.scope)
