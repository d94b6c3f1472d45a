"""A few asyncpg connections kept open for the hot paths (the balance and charge workers, the
relay's drains).

SQLAlchemy's pool (checkout events, reset on return) and asyncpg's own pool (a reset query on
every release) each cost more per use than a group-commit transaction of a handful of events
can afford. These connections are simply kept: taken, used for one transaction, put back. One
that failed at the connection level, or that comes back inside a transaction (a cancelled
coroutine), is dropped and replaced on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db.engine import CONNECTION_ERRORS, raw_connection

log = structlog.get_logger(__name__)

# Generic plans: the same few statements run thousands of times a second, and re-planning them
# per execution cost more than executing the lock query. A generic plan is kept for the
# connection's life, though, and one made while a table was small (a new database, statistics
# not yet refreshed) may scan it whole on every debit: no sequential scans on these
# connections, where every read is by key.
HOT_SETTINGS: dict[str, str] = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}


class HotPool:
    """`size` connections at most, checked out one transaction at a time.

    A permit per connection (a semaphore) bounds them: a checkout takes a permit, then an idle
    connection or a new one, and gives the permit back however it ends. A connection that
    broke is simply not put back, and its permit lets the next waiter open a fresh one: no
    waiter is left behind by a connection that went away (PostgreSQL restarted, a proxy cut
    it). A checkout waits at most `checkout_timeout_s` (SQLAlchemy's pool default) and then
    raises TimeoutError, which the caller's message retry handles.
    """

    def __init__(self, dsn: str, size: int, *, checkout_timeout_s: float = 30.0) -> None:
        self._dsn = dsn
        self._size = size
        self._checkout_timeout_s = checkout_timeout_s
        self._permits = asyncio.Semaphore(size)
        self._idle: list[asyncpg.Connection[Any]] = []
        self._closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection[Any]]:
        async with asyncio.timeout(self._checkout_timeout_s):
            await self._permits.acquire()
        try:
            conn = self._idle.pop() if self._idle else await self._connect()
            healthy = False
            try:
                yield conn
                healthy = True
            except CONNECTION_ERRORS:
                raise
            except BaseException:
                healthy = True  # a statement failed; `conn.transaction()` has rolled back
                raise
            finally:
                if (
                    healthy
                    and not self._closed
                    and not conn.is_closed()
                    and not conn.is_in_transaction()
                ):
                    self._idle.append(conn)
                else:
                    conn.terminate()
        finally:
            self._permits.release()

    async def _connect(self) -> asyncpg.Connection[Any]:
        return await asyncpg.connect(self._dsn, server_settings=dict(HOT_SETTINGS))

    async def open(self) -> None:
        """Open every connection now rather than in the first messages after a start. Best
        effort: with PostgreSQL away the worker starts anyway, and connects on demand."""
        wanted = self._size - len(self._idle)
        opened = await asyncio.gather(
            *(self._connect() for _ in range(wanted)), return_exceptions=True
        )
        for conn in opened:
            if isinstance(conn, asyncpg.Connection):
                self._idle.append(conn)
            else:
                log.warning("db.pool_not_opened", error=str(conn)[:200])

    async def close(self) -> None:
        """Close the idle connections; one checked out now is closed when it comes back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


# Where a service gets its connection: a worker's kept connections, or an engine's pool (the
# CLI, the web process, tests).
ConnectionSource = AsyncEngine | HotPool


def connection(source: ConnectionSource) -> AbstractAsyncContextManager[asyncpg.Connection[Any]]:
    return source.connection() if isinstance(source, HotPool) else raw_connection(source)
