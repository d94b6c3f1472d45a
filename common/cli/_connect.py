"""PostgreSQL and Redis for one command; a service that cannot be used becomes a SetupError."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import redis

from common.cli._common import SetupError
from common.db.engine import create_engine, raw_connection
from common.db.unavailable import UPGRADE_HINT, classify, database_name
from config.settings import Settings, get_settings

T = TypeVar("T")
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


@asynccontextmanager
async def connection(settings: Settings | None = None) -> AsyncIterator[asyncpg.Connection[Any]]:
    """One connection of a short-lived engine (one CLI command)."""
    settings = settings or get_settings()
    engine = create_engine(settings, pool_size=1)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(engine.dispose)
        try:
            conn = await stack.enter_async_context(raw_connection(engine))
        except Exception as exc:
            # Only connecting is translated: an error of the command itself stays what it is.
            problem = classify(exc, settings.database_url)
            if problem is None:
                raise
            raise SetupError(str(problem)) from None
        try:
            yield conn
        except asyncpg.UndefinedTableError as exc:
            # A database that exists but was never migrated (or only partly).
            raise SetupError(
                f"{exc} in database {database_name(settings.database_url)}; {UPGRADE_HINT}"
            ) from None


async def with_conn(fn: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
    async with connection() as conn:
        return await fn(conn)


def redis_location(url: str) -> str:
    """Where Redis is, without the password a URL may carry."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


def unreachable(settings: Settings, exc: Exception) -> str:
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return f"cannot reach Redis at {redis_location(settings.broker_redis_url)}: {reason}"


@contextmanager
def redis_errors(settings: Settings) -> Iterator[None]:
    """Redis that does not answer, anywhere inside, becomes a one-line SetupError."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise SetupError(unreachable(settings, exc)) from None


@contextmanager
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    """A client for one command; an unreachable Redis becomes a one-line SetupError."""
    # Short timeouts: an operator's command should fail fast rather than hang on a dead host.
    client = redis.Redis.from_url(
        settings.broker_redis_url, socket_connect_timeout=3, socket_timeout=10
    )
    try:
        with redis_errors(settings):
            yield client
    finally:
        client.close()
