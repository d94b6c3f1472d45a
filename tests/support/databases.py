"""Databases of a test's own, beside the session's migrated one: created empty, always dropped."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from common.demo.services import admin_url, with_database


def _admin_url() -> str:
    # The services plugin points CONTACTO_TEST_PG at the server in use (maybe an embedded one).
    return admin_url(os.environ.get("CONTACTO_TEST_PG", "postgresql://postgres@127.0.0.1:5432"))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_admin_url())
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
        yield name, with_database(_admin_url(), name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
