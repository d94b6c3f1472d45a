"""Run a multi-statement SQL script from inside an Alembic migration (asyncpg under greenlets)."""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only


def execute_script(sql: str) -> None:
    # asyncpg's execute() without arguments uses the simple query protocol, which accepts
    # several statements (and dollar-quoted function bodies) in one string.
    raw = op.get_bind().connection.dbapi_connection
    assert raw is not None
    await_only(raw.driver_connection.execute(sql))
