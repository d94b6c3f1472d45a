"""`contacto-billing db upgrade`: create the database when missing, then apply migrations."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from common.db.schema import (
    CONNECT_TIMEOUT_S,
    MIGRATIONS_DIR,
    read_revision,
    revisions_between,
)
from common.db.unavailable import MissingDatabase, classify, database_name
from config.settings import Settings

_DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = $1"


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    database: str
    created: bool  # the database did not exist and this upgrade created it
    applied: tuple[str, ...]  # revisions applied by this upgrade, oldest first
    revision: str | None  # where the schema stands now


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on a '%' in a password.
    cfg.set_main_option("sqlalchemy.url", settings.async_database_url.replace("%", "%%"))
    return cfg


async def _connect(url: str) -> asyncpg.Connection[Any]:
    """A connection whose failures are DatabaseUnavailable when they are about the environment."""
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:
        problem = classify(exc, url)
        if problem is None:
            raise
        raise problem from None


async def ensure_database(settings: Settings) -> bool:
    """Create the target database if it does not exist. Returns True when it was created."""
    url = make_url(settings.async_database_url)
    name = url.database or "postgres"
    admin = url.set(drivername="postgresql", database="postgres")
    conn = await _connect(admin.render_as_string(hide_password=False))
    try:
        if await conn.fetchval(_DATABASE_EXISTS, name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False  # created concurrently by another process: fine
        return True
    finally:
        await conn.close()


async def current_revision(settings: Settings) -> str | None:
    try:
        conn = await _connect(settings.asyncpg_dsn)
    except MissingDatabase:
        return None
    try:
        return await read_revision(conn)
    finally:
        await conn.close()


async def _prepare(settings: Settings) -> tuple[bool, str | None]:
    created = await ensure_database(settings)
    return created, None if created else await current_revision(settings)


def upgrade(settings: Settings, revision: str = "head") -> UpgradeResult:
    """Raises DatabaseUnavailable when PostgreSQL does not answer or refuses the login."""
    created, before = asyncio.run(_prepare(settings))
    # Alembic runs its own event loop (migrations/env.py): not inside ours.
    command.upgrade(alembic_config(settings), revision)
    after = asyncio.run(current_revision(settings))
    applied = revisions_between(before, after) if after is not None and after != before else []
    return UpgradeResult(database_name(settings.database_url), created, tuple(applied), after)
