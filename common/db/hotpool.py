"""A few asyncpg connections kept open for the balance worker's hot path.

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
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db.engine import CONNECTION_ERRORS, raw_connection

# Generic plans: the same few statements run thousands of times a second, and re-planning them
# per execution cost more than executing the lock query. A generic plan is kept for the
# connection's life, though, and one made while a table was small (a new database, statistics
# not yet refreshed) may scan it whole on every debit: no sequential scans on these
# connections, where every read is by key.
HOT_SETTINGS: dict[str, str] = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}


class HotPool:
    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._size = size
        self._idle: asyncio.Queue[asyncpg.Connection[Any]] = asyncio.Queue()
        self._open = 0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection[Any]]:
        conn = await self._take()
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
            if healthy and not conn.is_closed() and not conn.is_in_transaction():
                self._idle.put_nowait(conn)
            else:
                self._open -= 1
                conn.terminate()

    async def _take(self) -> asyncpg.Connection[Any]:
        if self._idle.empty() and self._open < self._size:
            self._open += 1
            try:
                return await asyncpg.connect(self._dsn, server_settings=dict(HOT_SETTINGS))
            except BaseException:
                self._open -= 1
                raise
        return await self._idle.get()

    async def open(self) -> None:
        """Open every connection now rather than in the first messages after a start (best
        effort: with PostgreSQL away the worker starts anyway, and opens them on demand)."""
        opened = await asyncio.gather(
            *(self._take() for _ in range(self._size - self._open)), return_exceptions=True
        )
        for conn in opened:
            if isinstance(conn, asyncpg.Connection):
                self._idle.put_nowait(conn)

    async def close(self) -> None:
        while not self._idle.empty():
            await self._idle.get_nowait().close()
            self._open -= 1


# Where a service gets its connection: a worker's kept connections, or an engine's pool (the
# CLI, the web process, tests).
ConnectionSource = AsyncEngine | HotPool


def connection(source: ConnectionSource) -> AbstractAsyncContextManager[asyncpg.Connection[Any]]:
    return source.connection() if isinstance(source, HotPool) else raw_connection(source)
