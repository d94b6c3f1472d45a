"""The workers' kept connections: reused, replaced when broken, bounded, closed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from common.db.hotpool import HotPool
from config.settings import Settings


async def test_connections_are_kept_and_replaced_when_broken(settings: Settings, conn: Any) -> None:
    pool = HotPool(settings.asyncpg_dsn, size=1)
    try:
        async with pool.connection() as c:
            first_pid = c.get_server_pid()
        async with pool.connection() as c:
            assert c.get_server_pid() == first_pid  # the same connection, kept
        await conn.execute("SELECT pg_terminate_backend($1)", first_pid)
        with pytest.raises(Exception):  # noqa: B017 - whatever asyncpg raises for a dead socket
            async with pool.connection() as c:
                await c.fetchval("SELECT 1")
        async with pool.connection() as c:
            assert c.get_server_pid() != first_pid
            assert await c.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_a_statement_error_keeps_the_connection_but_an_open_transaction_does_not(
    settings: Settings,
) -> None:
    pool = HotPool(settings.asyncpg_dsn, size=1)
    try:
        async with pool.connection() as c:
            pid = c.get_server_pid()
        with pytest.raises(Exception, match="division by zero"):
            async with pool.connection() as c, c.transaction():
                await c.fetchval("SELECT 1 / 0")
        async with pool.connection() as c:
            assert c.get_server_pid() == pid
            tx = c.transaction()
            await tx.start()  # left open, as a cancelled coroutine would
        async with pool.connection() as c:
            assert c.get_server_pid() != pid and not c.is_in_transaction()
    finally:
        await pool.close()


async def test_a_waiter_gets_a_fresh_connection_when_the_one_it_waited_for_breaks(
    settings: Settings, conn: Any
) -> None:
    """Sixteen runs share five connections: when the connections in use die (PostgreSQL
    restarted), the runs waiting for one must get a fresh one, not wait for ever."""
    pool = HotPool(settings.asyncpg_dsn, size=1)
    try:
        holding = asyncio.Event()
        release = asyncio.Event()

        async def first() -> None:
            async with pool.connection() as c:
                pid = c.get_server_pid()
                holding.set()
                await release.wait()
                await conn.execute("SELECT pg_terminate_backend($1)", pid)
                await c.fetchval("SELECT 1")

        async def second() -> int:
            async with pool.connection() as c:
                return int(await c.fetchval("SELECT 1"))

        broken = asyncio.create_task(first())
        await holding.wait()
        waiting = asyncio.create_task(second())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # one connection, in use
        release.set()
        with pytest.raises(Exception):  # noqa: B017 - whatever asyncpg raises for a dead socket
            await broken
        assert await asyncio.wait_for(waiting, 5) == 1
    finally:
        await pool.close()


async def test_a_checkout_waits_at_most_its_timeout(settings: Settings) -> None:
    pool = HotPool(settings.asyncpg_dsn, size=1, checkout_timeout_s=0.2)
    try:
        async with pool.connection():
            with pytest.raises(TimeoutError):
                async with pool.connection():
                    pass
        async with pool.connection() as c:  # the permit came back
            assert await c.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_open_makes_every_connection_and_close_also_closes_those_out(
    settings: Settings,
) -> None:
    pool = HotPool(settings.asyncpg_dsn, size=3)
    await pool.open()
    pids = set()
    async with pool.connection() as a, pool.connection() as b, pool.connection() as c:
        pids = {a.get_server_pid(), b.get_server_pid(), c.get_server_pid()}
        await pool.close()
        assert not a.is_closed()  # in use: closed when it comes back
    assert len(pids) == 3
    assert a.is_closed() and b.is_closed() and c.is_closed()


async def test_open_without_a_database_starts_anyway(caplog: pytest.LogCaptureFixture) -> None:
    pool = HotPool("postgresql://postgres@127.0.0.1:1/none", size=2)
    await pool.open()  # no exception: the worker starts, and connects on demand
    await pool.close()
