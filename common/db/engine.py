"""Engine creation and the raw asyncpg connection used on hot paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from config.settings import Settings

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
)


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    return create_async_engine(
        settings.async_database_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=2,
        # No pre-ping: it costs three round trips (BEGIN; ';'; ROLLBACK) per checkout, on the
        # hot path once per transaction. A dead connection is invalidated when it fails
        # (raw_connection below) and the message is retried.
        # asyncpg caches prepared statements per connection; recycle keeps memory bounded.
        pool_recycle=3600,
    )


@asynccontextmanager
async def raw_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection[Any]]:
    """Borrow a pooled connection and hand out the asyncpg driver connection itself.

    Hot paths use asyncpg directly (arrays through unnest, no ORM round-trips); callers open
    their own `conn.transaction()`. SQLAlchemy never begins a transaction on this connection,
    so returning it to the pool leaves nothing behind.
    """
    async with engine.connect() as sa_conn:
        raw = await sa_conn.get_raw_connection()
        driver: asyncpg.Connection[Any] = raw.driver_connection
        try:
            yield driver
        except CONNECTION_ERRORS:
            # Never hand a broken connection to the next caller.
            await sa_conn.invalidate()
            raise
