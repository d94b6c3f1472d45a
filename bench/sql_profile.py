"""Where a debit transaction spends its time, statement by statement.

    .venv/bin/python bench/sql_profile.py [--txns 2000] [--batch 100]

Runs the balance worker's database path (`common.usage.service`'s `_apply`: a connection
from `common.db.hotpool` where the code has it, else `common.db.engine.raw_connection`, then
`common.usage.debits.apply_usage`) at
concurrency 1, so nothing waits on anything else, with the connection wrapped in a probe that
times every call. For each step it reports the wall time seen by the client, the client's CPU
time (Python + asyncpg), and the PostgreSQL backend's CPU time, read from
/proc/<backend pid>/schedstat (nanoseconds on CPU) before and after the call. PostgreSQL must run
on this machine for the server column.

Creates its own database (contacto_sqlprof_<random>) and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import secrets
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from common.names import ACTOR_RECORD_USAGE_BATCH
from common.recharge.config import PolicyConfig

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"
POLICY = PolicyConfig(retry_min_interval=timedelta(seconds=1800), run_max_charges=10)


def server_cpu_ns(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            return int(fh.read().split()[0])
    except OSError:
        return 0


class Probe:
    """Stands in for an asyncpg connection; records wall / client CPU / server CPU per step."""

    def __init__(self) -> None:
        self.conn: asyncpg.Connection[Any] | None = None
        self.pid = 0
        self.totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
        self.order: list[str] = []
        self.overhead = (0.0, 0.0)  # the probe's own wall / CPU per step, subtracted

    def calibrate(self, rounds: int = 5000) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            _ = time.perf_counter(), time.process_time(), server_cpu_ns(self.pid)
            _ = time.perf_counter(), time.process_time(), server_cpu_ns(self.pid)
        self.overhead = (
            (time.perf_counter() - wall) / rounds,
            (time.process_time() - cpu) / rounds,
        )

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[None]:
        wall, cpu, srv = time.perf_counter(), time.process_time(), server_cpu_ns(self.pid)
        try:
            yield
        finally:
            row = self.totals[name]
            if name not in self.order:
                self.order.append(name)
            row[0] += 1
            row[1] += time.perf_counter() - wall - self.overhead[0]
            row[2] += time.process_time() - cpu - self.overhead[1]
            row[3] += (server_cpu_ns(self.pid) - srv) / 1e9

    # the asyncpg methods common.usage.debits uses ---------------------------------------------

    def transaction(self) -> _ProbeTransaction:
        assert self.conn is not None
        return _ProbeTransaction(self, self.conn.transaction())

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        assert self.conn is not None
        async with self.step(label(sql)):
            rows: list[asyncpg.Record] = await self.conn.fetch(sql, *args)
            return rows

    async def execute(self, sql: str, *args: Any) -> str:
        assert self.conn is not None
        async with self.step(label(sql)):
            status: str = await self.conn.execute(sql, *args)
            return status

    async def fetchval(self, sql: str, *args: Any) -> Any:
        assert self.conn is not None
        async with self.step(label(sql)):
            return await self.conn.fetchval(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        assert self.conn is not None
        async with self.step(label(sql)):
            return await self.conn.fetchrow(sql, *args)


class _ProbeTransaction:
    def __init__(self, probe: Probe, tx: Any) -> None:
        self.probe, self.tx = probe, tx

    async def __aenter__(self) -> None:
        async with self.probe.step("BEGIN"):
            await self.tx.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        async with self.probe.step("COMMIT" if exc[0] is None else "ROLLBACK"):
            await self.tx.__aexit__(*exc)


def label(sql: str) -> str:
    text = " ".join(sql.split())
    for needle, name in (
        ("WITH input AS", "debit statement (lock + events + ledger + balances)"),
        ("FOR UPDATE", "SELECT accounts ... FOR UPDATE (lock_accounts)"),
        ("INSERT INTO usage_events", "INSERT usage_events ... ON CONFLICT DO NOTHING"),
        ("INSERT INTO ledger_entries", "INSERT ledger_entries"),
        ("UPDATE accounts", "UPDATE accounts SET balance"),
        ("FROM usage_events WHERE", "SELECT existing usage_events"),
        ("INSERT INTO rejected_usage", "INSERT rejected_usage"),
    ):
        if needle in text:
            return name
    return text[:50]


def make_items(run: str, start: int, count: int, accounts: int) -> list[Any]:
    from common.usage.decode import decode_batch

    now = datetime.now(UTC).isoformat()
    events = [
        {
            "event_id": f"ev-{run}-{hashlib.blake2b(str(i).encode(), digest_size=12).hexdigest()}",
            "account_id": f"prof-a{(i * 761) % accounts:05d}",
            "amount": "0.013007",
            "currency": "USD",
            "occurred_at": now,
            "kind": "voice",
        }
        for i in range(start, start + count)
    ]
    return decode_batch(
        (), {"events": events}, message_id=run, actor_name=ACTOR_RECORD_USAGE_BATCH
    ).items


async def profile(
    txns: int, batch: int, accounts: int, run: str, session_sql: str | None
) -> list[str]:
    from common.db.engine import create_engine, raw_connection
    from common.usage.debits import apply_usage
    from config.settings import Settings

    settings = Settings()
    engine = create_engine(settings)
    hot: Any = None
    try:  # the balance worker's own connections, where the code has them (since cae7879)
        from common.db.hotpool import HotPool

        hot = HotPool(settings.asyncpg_dsn, 1)
    except ImportError:
        pass
    checkout = "hot pool take" if hot else "pool checkout (pre_ping: BEGIN; ';'; ROLLBACK)"
    lines: list[str] = [f"connections: {'common.db.hotpool' if hot else 'raw_connection'}"]
    try:
        for size in (1, batch):
            probe = Probe()
            items_all = [make_items(f"{run}-{size}", k * size, size, accounts) for k in range(txns)]
            warm = 50
            for k, items in enumerate(items_all):
                if k == warm:  # plans cached, pool warm: start counting
                    probe.totals.clear()
                    probe.order.clear()
                cm = hot.connection() if hot else raw_connection(engine)
                async with probe.step(checkout):
                    conn = await cm.__aenter__()
                if probe.pid != conn.get_server_pid():
                    probe.conn, probe.pid = conn, conn.get_server_pid()
                    probe.calibrate()
                    if session_sql:
                        await conn.execute(session_sql)
                probe.conn = conn
                async with probe.step("total: apply_usage"):
                    await apply_usage(probe, items, [], POLICY)
                async with probe.step("pool checkin"):
                    await cm.__aexit__(None, None, None)
            lines += render(probe, size, txns - warm)
    finally:
        if hot:
            await hot.close()
        await engine.dispose()
    return lines


def render(probe: Probe, size: int, n: int) -> list[str]:
    out = [
        f"\n{size} event(s) per transaction, {n} transactions, concurrency 1 "
        f"(microseconds per transaction; probe overhead {probe.overhead[1] * 1e6:.0f} us/step "
        "subtracted):",
        f"{'step':<50} {'calls/txn':>9} {'wall':>8} {'client CPU':>11} {'server CPU':>11}",
    ]
    total_wall = total_cpu = total_srv = 0.0
    for name in probe.order:
        calls, wall, cpu, srv = probe.totals[name]
        if name.startswith("total"):
            continue
        total_wall, total_cpu, total_srv = total_wall + wall, total_cpu + cpu, total_srv + srv
        out.append(
            f"{name:<50} {calls / n:>9.2f} {wall / n * 1e6:>8.0f} {cpu / n * 1e6:>11.0f} "
            f"{srv / n * 1e6:>11.0f}"
        )
    calls, wall, cpu, srv = probe.totals["total: apply_usage"]
    out.append(
        f"{'sum of steps':<50} {'':>9} {total_wall / n * 1e6:>8.0f} "
        f"{total_cpu / n * 1e6:>11.0f} {total_srv / n * 1e6:>11.0f}"
    )
    out.append(
        f"{'apply_usage (BEGIN..COMMIT incl. Python)':<50} {'':>9} {wall / n * 1e6:>8.0f} "
        f"{cpu / n * 1e6:>11.0f} {srv / n * 1e6:>11.0f}"
    )
    out.append(
        f"per event: wall {total_wall / n / size * 1e6:.0f} us, client CPU "
        f"{total_cpu / n / size * 1e6:.0f} us, server CPU {total_srv / n / size * 1e6:.0f} us"
    )
    return out


async def main_async(args: argparse.Namespace) -> None:
    run = secrets.token_hex(4)
    db = f"contacto_sqlprof_{run}"
    base = args.pg_url.rstrip("/")
    os.environ["DATABASE_URL"] = f"{base}/{db}"
    from common.db.migrate import upgrade
    from config.settings import Settings

    try:
        await asyncio.to_thread(upgrade, Settings())
        conn = await asyncpg.connect(f"{base}/{db}")
        try:
            ids = [f"prof-a{j:05d}" for j in range(args.accounts)]
            await conn.execute(
                "INSERT INTO accounts (id, currency, balance) "
                "SELECT id, 'USD', $2 FROM unnest($1::text[]) AS t(id)",
                ids,
                Decimal(10**9),
            )
            if args.setup_sql:
                await conn.execute(args.setup_sql)
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
        lines = await profile(args.txns, args.batch, args.accounts, run, args.session_sql)
        print("\n".join(lines))
    finally:
        admin = await asyncpg.connect(f"{base}/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        finally:
            await admin.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--txns", type=int, default=2000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument(
        "--session-sql",
        help="run on each new connection, e.g. 'SET plan_cache_mode = force_generic_plan'",
    )
    p.add_argument(
        "--setup-sql",
        help="EXPERIMENT: run once after migrating, e.g. to drop a constraint and see its cost",
    )
    p.add_argument("--pg-url", default=os.environ.get("CONTACTO_BENCH_PG", DEFAULT_PG))
    args = p.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
