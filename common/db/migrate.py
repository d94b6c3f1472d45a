"""`contacto-billing db upgrade`: create the database when missing, then apply migrations."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from config.settings import Settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on a '%' in a password.
    cfg.set_main_option("sqlalchemy.url", settings.async_database_url.replace("%", "%%"))
    return cfg


async def ensure_database(settings: Settings) -> bool:
    """Create the target database if it does not exist. Returns True when it was created."""
    url = make_url(settings.async_database_url)
    name = url.database or "postgres"
    admin = url.set(drivername="postgresql", database="postgres")
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False  # created concurrently by another process: fine
        return True
    finally:
        await conn.close()


def upgrade(settings: Settings, revision: str = "head") -> None:
    asyncio.run(ensure_database(settings))
    command.upgrade(alembic_config(settings), revision)
