"""The balance worker's kept connections: reused, and replaced when broken."""

from __future__ import annotations

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
