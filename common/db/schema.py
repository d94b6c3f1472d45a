"""Where a database's schema stands against this code's migrations.

Read from Alembic's own bookkeeping (`alembic_version`), so the check is one cheap query that
processes can afford at start-up, and `db upgrade` can say what it changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from common.db.unavailable import MissingDatabase, classify, database_name
from config.settings import Settings

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
CONNECT_TIMEOUT_S = 10.0

SchemaState = Literal["current", "missing", "outdated", "unknown"]


def scripts() -> ScriptDirectory:
    # Imported on use: importing alembic logs its plugin set-up, and a dramatiq worker imports
    # this module before its logging is configured to say only what matters.
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR))


def head_revision() -> str:
    head = scripts().get_current_head()
    assert head is not None, "no migrations found"
    return head


def revisions_between(lower: str | None, upper: str) -> list[str]:
    """The revisions after `lower` up to `upper` included, oldest first."""
    return [s.revision for s in reversed(list(scripts().iterate_revisions(upper, lower)))]


async def read_revision(conn: asyncpg.Connection[Any]) -> str | None:
    """The revision the database is at; None when no migration ever ran."""
    if await conn.fetchval("SELECT to_regclass('alembic_version')") is None:
        return None
    revision: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
    return revision


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    database: str
    revision: str | None  # None: no database, or no migration ever ran on it
    head: str
    database_exists: bool = True

    @property
    def state(self) -> SchemaState:
        if self.revision == self.head:
            return "current"
        if self.revision is None:
            return "missing"
        if self.revision in revisions_between(None, self.head):
            return "outdated"
        # Newer than this code knows (a later release migrated it): not ours to judge.
        return "unknown"


async def schema_status(settings: Settings) -> SchemaStatus:
    """Raises DatabaseUnavailable when PostgreSQL does not answer or refuses the login."""
    name, head = database_name(settings.database_url), head_revision()
    try:
        conn = await asyncpg.connect(settings.asyncpg_dsn, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:
        problem = classify(exc, settings.database_url)
        if isinstance(problem, MissingDatabase):
            return SchemaStatus(name, None, head, database_exists=False)
        if problem is not None:
            raise problem from None
        raise
    try:
        return SchemaStatus(name, await read_revision(conn), head)
    finally:
        await conn.close()
