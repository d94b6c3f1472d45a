"""`python -m bench.latency`: open-loop latency of the pipeline, measured from outside.

Two measurements on the Procfile's processes (balance, charge, retry, relay), simulated gateway:

* **publish → committed debit**: a producer sends single `record_usage` messages at a fixed
  rate (open loop: each event is stamped with the time it was *due* to be sent, so a producer
  that falls behind cannot hide a stall), over `--accounts` accounts that never come near a
  recharge; latency = `usage_events.recorded_at` (the debit's transaction) − `occurred_at`.
  One window per rate in `--rates`; a queue still growing at the end of a window is reported.
* **threshold crossing → credited recharge**: `--crossing` accounts with a card and
  auto-recharge (T 100, R 25) at balance 100.01 get one debit each, all at once; latency =
  the recharge's ledger row − the crossing debit's row (both `created_at`/`recorded_at`).

Needs PostgreSQL and Redis (`CONTACTO_BENCH_PG`, `CONTACTO_BENCH_REDIS`; 127.0.0.1 by
default); creates and drops `contacto_bench_latency_<random>` and its own namespace. Extra
environment for the processes: `--env NAME=VALUE` (e.g. `dramatiq_worker_timeout=1000` for
dramatiq's default idle poll).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import redis

from bench.pipeline import REPO
from bench.pipeline.console import say
from bench.pipeline.cpu import CpuSnapshot, cpu_snapshot
from bench.pipeline.database import BenchDatabase, open_accounts
from bench.pipeline.processes import Processes, child_env, stop
from common import procfile

PROCESSES = ("balance", "charge", "retry", "relay")
# The crossing is played twice on fresh accounts: first on a charge worker that has not charged
# yet since it started (its pool's connections and prepared statements are opened by these
# runs), then again on the warmed-up worker, the steady state of a running deployment.
CROSSINGS = ("first after start", "warm")
T = Decimal("100")
R = Decimal("25")


@dataclass
class Window:
    rate: int
    sent: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    behind_ms: float  # how late the producer was at worst (its own CPU)


# Where a crossing's time goes, per account: the debit's transaction, the relay publishing the
# run's message (outbox.sent_at), the charge worker's charge row (written before the gateway is
# called), the credit.
STAGES_SQL = """
WITH t AS (
    SELECT u.account_id,
           min(u.recorded_at) AS debited,
           (SELECT min(o.sent_at) FROM outbox o
             WHERE o.actor_name = 'run_recharge'
               AND (o.payload::jsonb ->> 'run_id')::bigint = min(r.id)) AS published,
           (SELECT min(c.created_at) FROM charges c WHERE c.run_id = min(r.id)) AS charged,
           (SELECT min(l.created_at) FROM ledger_entries l
             WHERE l.account_id = u.account_id AND l.kind = 'recharge') AS credited
    FROM usage_events u JOIN recharge_runs r ON r.account_id = u.account_id
    WHERE u.event_id LIKE $1
    GROUP BY u.account_id
), s AS (
    SELECT 'debit -> relay published run_recharge' AS stage, 1 AS n,
           extract(epoch FROM published - debited) * 1000 AS ms FROM t
    UNION ALL
    SELECT 'published -> charge row (queue, worker pickup)', 2,
           extract(epoch FROM charged - published) * 1000 FROM t
    UNION ALL
    SELECT 'charge row -> credit (gateway, commit)', 3,
           extract(epoch FROM credited - charged) * 1000 FROM t
)
SELECT stage, n, min(ms) AS least, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99
FROM s GROUP BY stage, n ORDER BY n
"""


async def percentiles(conn: asyncpg.Connection[Any], sql: str, *args: Any) -> list[float]:
    row = await conn.fetchrow(
        "SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY ms) AS p, "
        f"max(ms) AS m FROM ({sql}) AS t",
        *args,
    )
    assert row is not None and row["p"] is not None, "no samples"
    return [float(v) for v in row["p"]] + [float(row["m"])]


async def wait_count(conn: asyncpg.Connection[Any], sql: str, arg: str, n: int) -> None:
    deadline = time.monotonic() + 300
    while int(await conn.fetchval(sql, arg)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sql} {arg}: fewer than {n} after 300 s")
        await asyncio.sleep(0.2)


def produce(broker: Any, rate: int, seconds: float, accounts: int, tag: str) -> tuple[int, float]:
    """Open loop: event n is due at start + n / rate and stamped with that time."""
    from common.broker.publish import usage_message

    total = int(rate * seconds)
    started_wall = datetime.now(UTC)
    started = time.monotonic()
    behind = 0.0
    for n in range(total):
        due = started + n / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            behind = max(behind, -wait)
        broker.enqueue(
            usage_message(
                {
                    "event_id": f"{tag}-{n}",
                    "account_id": f"lat-{n % accounts}",
                    "amount": "0.000100",
                    "currency": "USD",
                    "occurred_at": (started_wall + timedelta(seconds=n / rate)).isoformat(),
                    "kind": "voice",
                }
            )
        )
    return total, behind * 1000


async def setup(url: str, settings: Any, accounts: int, crossing: int, rounds: int) -> None:
    from common.accounts.support import create_account, credit_account
    from common.gateway.factory import build_gateway
    from common.recharge.settings import attach_card, set_auto_recharge

    conn = await asyncpg.connect(url)
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        ids = [f"lat-{i}" for i in range(accounts)]
        await open_accounts(conn, ids)
        gateway = build_gateway(settings, client)
        for i in range(crossing * rounds):
            acct = f"cross-{i}"
            await create_account(conn, acct, "USD")
            await credit_account(conn, acct, T + Decimal("0.01"), "bench opening")
            await attach_card(conn, gateway, acct, "pm_card_visa", settings)
            await set_auto_recharge(conn, acct, settings, balance_amount=T, recharge_amount=R)
    finally:
        await client.aclose()
        await conn.close()


def reference_loop_ms() -> float:
    """A fixed pure-Python loop, timed: this machine's CPU speed drifts (the same loop took 0.5 s
    and 1.05 s a minute apart), so each crossing is printed beside how fast the machine was."""
    started = time.perf_counter()
    total = 0
    for i in range(300_000):
        total += i * i
    return (time.perf_counter() - started) * 1000


async def crossing(
    conn: asyncpg.Connection[Any], broker: Any, accounts: range, suffix: str
) -> tuple[list[float], list[asyncpg.Record], dict[str, float]]:
    """One debit each for `accounts` (cross-<i>), all at once; wait for every recharge."""
    from common.broker.publish import usage_message

    tag = f"cross-{suffix}-{accounts.start}"
    reference_ms = reference_loop_ms()
    before = cpu_snapshot()
    at = datetime.now(UTC).isoformat()
    for i in accounts:
        event = {
            "event_id": f"{tag}-{i}",
            "account_id": f"cross-{i}",
            "amount": "0.02",
            "currency": "USD",
            "occurred_at": at,
            "kind": "voice",
        }
        broker.enqueue(usage_message(event))
    await wait_count(
        conn,
        "SELECT count(*) FROM ledger_entries l JOIN usage_events u USING (account_id) "
        "WHERE l.kind = 'recharge' AND u.event_id LIKE $1",
        f"{tag}-%",
        len(accounts),
    )
    found = await percentiles(
        conn,
        "SELECT extract(epoch FROM min(l.created_at) - min(u.recorded_at)) * 1000 AS ms "
        "FROM usage_events u JOIN ledger_entries l ON l.account_id = u.account_id "
        "AND l.kind = 'recharge' WHERE u.event_id LIKE $1 GROUP BY u.account_id",
        f"{tag}-%",
    )
    spent = cpu_by_process(before, cpu_snapshot())
    spent["reference loop"] = reference_ms
    return found, await conn.fetch(STAGES_SQL, f"{tag}-%"), spent


def _role(pid: int, comm: str) -> str | None:
    if comm == "postgres" or comm.startswith("redis-server"):
        return comm.split("-")[0]
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return None
    for arg in argv:
        if arg.startswith(b"workers."):
            return arg.decode()
    return None


def cpu_by_process(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
    """CPU milliseconds each kind of process used in the window (every dramatiq process of a
    worker line counts for that line), and the machine's total."""
    spent: dict[str, float] = {}
    for pid, proc in end.procs.items():
        before = start.procs.get(pid)
        delta = proc.cpu - (before.cpu if before else 0.0)
        role = _role(pid, proc.comm) if delta > 0 else None
        if role is not None:
            spent[role] = spent.get(role, 0.0) + delta * 1000
    spent["machine (all processes)"] = (end.busy - start.busy) * 1000
    spent["wall"] = (end.at - start.at) * 1000
    return spent


async def run(args: argparse.Namespace) -> int:
    from common.broker.factory import build_broker
    from config.settings import Settings

    suffix = uuid.uuid4().hex[:8]
    database = BenchDatabase(args.pg, f"contacto_bench_latency_{suffix}")
    namespace = f"contacto-bench-latency-{suffix}"
    env = child_env(
        db_url=database.url, redis_url=args.redis, namespace=namespace, worker_env=args.env
    )
    os.environ.update(
        DATABASE_URL=database.url,
        REDIS_URL=args.redis,
        CONTACTO_BROKER_NAMESPACE=namespace,
        CONTACTO_SIMULATED_PREFIX=f"{namespace}:simgw",
        PAYMENT_GATEWAY="simulated",
    )
    settings = Settings()
    processes = Processes()
    work = Path(tempfile.mkdtemp(prefix="contacto-bench-latency-"))
    windows: list[Window] = []
    crossings: list[tuple[str, list[float], list[asyncpg.Record], dict[str, float]]] = []
    try:
        await database.create(None)
        labels = [CROSSINGS[0]] + [
            CROSSINGS[1] + (f" {n + 1}" if args.warm_rounds > 1 else "")
            for n in range(args.warm_rounds)
        ]
        await setup(database.url, settings, args.accounts, args.crossing, len(labels))
        lines = procfile.read(REPO / "Procfile")
        started = []
        for name in PROCESSES:
            entry = lines[name]
            # The line's own settings (dramatiq_worker_timeout), not its metrics exposition.
            own = {
                k: procfile.expand(v, env)
                for k, v in entry.env.items()
                if not k.startswith("dramatiq_prom_") and "METRICS" not in k
            }
            started.append(await processes.spawn(list(entry.argv), env | own, work / f"{name}.log"))
        broker = build_broker(settings)
        conn = await asyncpg.connect(database.url)
        count_sql = "SELECT count(*) FROM usage_events WHERE event_id LIKE $1"
        warm = f"warm-{suffix}"
        await asyncio.to_thread(produce, broker, 200, 2, args.accounts, warm)
        await wait_count(conn, count_sql, f"{warm}-%", 400)
        say(f"processes up: {', '.join(PROCESSES)}; extra env {args.env or 'none'}")
        for rate in args.rates:
            tag = f"r{rate}-{suffix}"
            sent, behind_ms = await asyncio.to_thread(
                produce, broker, rate, args.seconds, args.accounts, tag
            )
            await wait_count(conn, count_sql, f"{tag}-%", sent)
            p50, p90, p99, top = await percentiles(
                conn,
                "SELECT extract(epoch FROM recorded_at - occurred_at) * 1000 AS ms "
                "FROM usage_events WHERE event_id LIKE $1",
                f"{tag}-%",
            )
            windows.append(Window(rate, sent, p50, p90, p99, top, behind_ms))
            say(f"  {rate}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms, producer late {behind_ms:.0f} ms")
        for n, label in enumerate(labels):
            if args.crossing:
                first = n * args.crossing
                found = await crossing(conn, broker, range(first, first + args.crossing), suffix)
                crossings.append((label, *found))
        await conn.close()
        broker.close()
        for proc in started:
            await stop(proc)
    finally:
        await processes.kill_all()
        await database.drop()
        await database.close()
        client = redis.Redis.from_url(args.redis)
        with contextlib.suppress(Exception):
            keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
            if keys:
                client.delete(*keys)
        client.close()
    print(f"bench.latency: extra env {' '.join(args.env) or 'none'}; load {os.getloadavg()[0]:.2f}")
    print(f"{'rate/s':>7} {'sent':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'producer late ms':>17}")  # fmt: skip
    for w in windows:
        print(f"{w.rate:>7} {w.sent:>7} {w.p50_ms:>8.1f} {w.p90_ms:>8.1f} {w.p99_ms:>8.1f} "
              f"{w.max_ms:>8.1f} {w.behind_ms:>17.0f}")  # fmt: skip
    for label, crossing_ms, stages, spent in crossings:
        p50, p90, p99, top = crossing_ms
        print(f"crossing -> credit, {args.crossing} accounts at once, {label}: p50 {p50:.0f} ms, "
              f"p90 {p90:.0f} ms, p99 {p99:.0f} ms, max {top:.0f} ms")  # fmt: skip
        for row in stages:
            print(f"  {row['stage']:<47} min {row['least']:>5.0f} ms  p50 {row['p50']:>5.0f} ms  "
                  f"p99 {row['p99']:>5.0f} ms")  # fmt: skip
        print("  CPU ms while it ran: " + ", ".join(f"{k} {v:.0f}" for k, v in spent.items()))
    warm_p99s = sorted(ms[2] for _, ms, _, _ in crossings[1:])
    if len(warm_p99s) > 1:
        median = statistics.median(warm_p99s)
        print(f"warm crossings: p99 median {median:.0f} ms over {len(warm_p99s)} rounds "
              f"(least {warm_p99s[0]:.0f}, most {warm_p99s[-1]:.0f})")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument(
        "--rates", type=lambda s: [int(x) for x in s.split(",")], default=[200, 500, 1000]
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="per rate")
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--crossing", type=int, default=40)
    parser.add_argument(
        "--warm-rounds", type=int, default=1, help="warm crossings, each on fresh accounts"
    )
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    args.pg = os.environ.get("CONTACTO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    args.redis = os.environ.get("CONTACTO_BENCH_REDIS", "redis://127.0.0.1:6379/0")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
