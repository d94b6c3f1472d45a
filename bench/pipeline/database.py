"""The bench's own database: created and migrated at the start, dropped at the end.

The admin connection (to the `postgres` database) stays open for the whole run: it creates and
drops the database, and reads the counters of `pg_stat_activity` / `pg_stat_database`, from
outside the bench database so it counts in neither.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from bench.pipeline.console import say
from bench.pipeline.events import account_id
from bench.pipeline.phases import Phase

# Large enough that no phase brings an account near zero: no recharge may start.
OPENING_BALANCE = Decimal("1000000")


@dataclass(frozen=True, slots=True)
class Xacts:
    """Cumulative counters of the bench database (`pg_stat_database`)."""

    commit: int
    rollback: int
    sessions: int


async def open_accounts(
    conn: asyncpg.Connection[Any],
    ids: list[str],
    *,
    currency: str = "USD",
    balance: Decimal = OPENING_BALANCE,
) -> None:
    """Accounts with an opening credit, auto-recharge off (the column default): balance and
    ledger agree, and no recharge may start."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO accounts (id, currency, balance) "
            "SELECT id, $2, $3 FROM unnest($1::text[]) AS t(id)",
            ids,
            currency,
            balance,
        )
        await conn.execute(
            "INSERT INTO ledger_entries (account_id, amount, balance_after, kind, "
            "reference) SELECT id, $2, $2, 'credit', 'opening-' || id "
            "FROM unnest($1::text[]) AS t(id)",
            ids,
            balance,
        )


class BenchDatabase:
    def __init__(self, pg_url: str, name: str) -> None:
        self.name = name
        self.admin_url = pg_url.rstrip("/") + "/postgres"
        self.url = f"{pg_url.rstrip('/')}/{name}"
        self.admin: asyncpg.Connection[Any] | None = None
        self.created = False

    def _admin(self) -> asyncpg.Connection[Any]:
        assert self.admin is not None, "BenchDatabase.create() first"
        return self.admin

    async def create(self, setup_sql: str | None) -> None:
        """Create and migrate, the way a deployment does. DATABASE_URL must already name it."""
        # Imported here: alembic and SQLAlchemy are only needed now, not by `--help` or by the
        # direct children.
        from common.db.migrate import upgrade
        from config.settings import Settings

        self.admin = await asyncpg.connect(self.admin_url)
        say(f"creating database {self.name} and migrating")
        self.created = True  # before migrating: a half-migrated database is dropped too
        await asyncio.to_thread(upgrade, Settings())
        if setup_sql:
            say(f"EXPERIMENT: running on the bench database: {setup_sql}")
            conn = await asyncpg.connect(self.url)
            try:
                await conn.execute(setup_sql)
            finally:
                await conn.close()

    async def drop(self) -> None:
        with contextlib.suppress(Exception):
            admin = self.admin or await asyncpg.connect(self.admin_url)
            # FORCE: a worker killed mid-phase may leave a backend behind.
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            say(f"dropped database {self.name}")

    async def close(self) -> None:
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await self.admin.close()

    async def checkpoint(self) -> None:
        """Flush the previous phase's dirty pages now rather than during the next window."""
        await self._admin().execute("CHECKPOINT")

    async def create_accounts(self, phase: Phase) -> None:
        ids = [account_id(phase.name, j) for j in range(phase.accounts)]
        conn = await asyncpg.connect(self.url)
        try:
            # Every phase starts on empty tables: a phase must not inherit the table and index
            # sizes, or the dead row versions, of the phases before it (the planner scans a
            # small `accounts` table whole, and this server may run without autovacuum).
            await conn.execute(
                "TRUNCATE accounts, ledger_entries, usage_events, rejected_usage, recharge_runs, "
                "charges, outbox RESTART IDENTITY CASCADE"
            )
            await open_accounts(conn, ids)
            await conn.execute("VACUUM (ANALYZE) accounts")
            await conn.execute("ANALYZE ledger_entries, usage_events")
        finally:
            await conn.close()

    async def backends(self) -> set[int]:
        """Pids of the backends connected to the bench database (their CPU is the pipeline's)."""
        rows = await self._admin().fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.name,
        )
        return {r["pid"] for r in rows}

    async def xacts(self) -> Xacts:
        """Commits and rollbacks in the bench database, once every backend of it has exited
        (a backend flushes its counters when it exits)."""
        for _ in range(1500):  # about 30 s at most
            if not await self.backends():
                break
            await asyncio.sleep(0.02)
        row = await self._admin().fetchrow(
            "SELECT xact_commit, xact_rollback, sessions FROM pg_stat_database WHERE datname = $1",
            self.name,
        )
        assert row is not None
        return Xacts(int(row["xact_commit"]), int(row["xact_rollback"]), int(row["sessions"]))
