"""PostgreSQL that cannot be used as configured, told in one line an operator can act on.

Connecting fails in a handful of ways that are about the environment, not about this code: the
server does not answer, it refuses the login, the database was never created. Each becomes a
`DatabaseUnavailable` whose text names where PostgreSQL was looked for (never the password).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import asyncpg
from sqlalchemy.engine import make_url

UPGRADE_HINT = "run `contacto-billing db upgrade` first"


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached or used as configured; the text is one line."""


class MissingDatabase(DatabaseUnavailable):
    """The server answers but the database does not exist (`db upgrade` creates it)."""


def location(url: str) -> str:
    """host:port of a database URL, without user or password."""
    parsed = make_url(url)
    host = parsed.host or str(parsed.query.get("host") or "localhost")
    return f"{host}:{parsed.port or 5432}"


def database_name(url: str) -> str:
    return make_url(url).database or "postgres"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps: SQLAlchemy keeps the driver's error in `.orig`."""
    current: BaseException | None = exc
    for _ in range(5):  # a bound, should a chain ever loop
        if current is None:
            return
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def classify(exc: BaseException, url: str) -> DatabaseUnavailable | None:
    """The environment problem behind an error raised while connecting, or None if it is not one."""
    where = location(url)
    for cause in _causes(exc):
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return MissingDatabase(
                f"database {database_name(url)} does not exist at {where}; "
                "run `contacto-billing db upgrade` (it creates it)"
            )
        if isinstance(
            cause, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
        ):
            return DatabaseUnavailable(f"PostgreSQL at {where} refused the login: {_reason(cause)}")
        # CannotConnectNow: the server is starting up or shutting down.
        if isinstance(
            cause, OSError | asyncpg.PostgresConnectionError | asyncpg.CannotConnectNowError
        ):
            return DatabaseUnavailable(f"cannot connect to PostgreSQL at {where}: {_reason(cause)}")
    return None
