"""Databases of a test's own, beside the session's migrated one: created empty, always dropped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from tests.conftest import PG_ADMIN_URL


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{PG_ADMIN_URL}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_database(*, create: bool = True) -> Iterator[tuple[str, str]]:
    """(name, DATABASE_URL) of a database that is empty, or absent with create=False; dropped
    afterwards whatever the test did to it."""
    name = f"contacto_fresh_{uuid.uuid4().hex[:10]}"
    if create:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield name, f"{PG_ADMIN_URL}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
