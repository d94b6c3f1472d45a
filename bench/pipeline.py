"""End-to-end throughput of the usage pipeline: Redis broker, worker processes, PostgreSQL.

    .venv/bin/python bench/pipeline.py [--events N] [--processes 2] [--threads 64] [--quick]

Every phase is measured the same way. The queue is filled first, then the worker processes are
started; the clock starts when every worker process has fetched from the queue (its broker id
appears in the namespace's heartbeat set) and stops when no message of the phase is left
unacknowledged (`<ns>:usage.msgs` and `<ns>:usage.DQ.msgs` are empty). Only the messages still
unacknowledged when the clock starts are counted, so process start-up is excluded. A message is
acknowledged only after its transaction committed, so "acknowledged" means "durable".

The database and the dramatiq namespace are the benchmark's own and are dropped at the end (also
on Ctrl-C). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import dramatiq
import redis.asyncio as aioredis

from common import procfile
from common.broker.publish import chunked, usage_batch_message, usage_message
from common.names import ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH, QUEUE_USAGE

SELF = Path(__file__).resolve()
REPO = SELF.parents[1]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
# The no-op actors of bench/_noop_worker.py (not imported here: importing it builds a broker).
NOOP_ASYNC = "bench_noop_async"
NOOP_SYNC = "bench_noop_sync"
OPENING_BALANCE = Decimal("1000000")
SINGLE_RATIO_TARGET = 0.70
BATCH_RATE_TARGET = 25_000.0
PHASE_TIMEOUT_S = 600.0
NOISE_CORES = 0.15  # "other" CPU above this in a phase: someone else was using the machine
CLK_TCK = os.sysconf("SC_CLK_TCK")

_t0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - _t0:6.1f}s] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Phases and the events they send
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    kind: str  # "worker": dramatiq processes; "direct": asyncpg from plain processes
    what: str
    events: int
    batch: int = 1  # events per message (worker) or per transaction (direct)
    module: str = ""  # dramatiq module (worker phases)
    actor: str = ""  # actor name on the messages (worker phases)
    accounts: int = 0  # 0: no database work (no-op phases)
    target: str = ""  # "ratio" (>= 70 % of noop-async) or "rate" (>= 25,000 events/s)
    env: tuple[tuple[str, str], ...] = ()  # extra worker environment for this phase
    baseline: bool = False  # a reference phase: runs with --baseline-threads (dramatiq's 8)

    @property
    def messages(self) -> int:
        return -(-self.events // self.batch)


def plan(args: argparse.Namespace) -> list[Phase]:
    n, nb, acc = args.events, args.batch_events, args.accounts
    balance = "workers.balance"
    noop_n = args.noop_events or n
    phases = [
        Phase("noop-async", "worker", "async no-op actor, stock RedisBroker, same middleware "
              "and queue", noop_n, module="bench._noop_worker", actor=NOOP_ASYNC, baseline=True),
        Phase("noop-sync", "worker", "sync no-op actor, stock RedisBroker, same middleware "
              "and queue", noop_n, module="bench._noop_worker", actor=NOOP_SYNC, baseline=True),
        Phase("noop-grouped", "worker", "async no-op actor on our broker (grouped acks)",
              noop_n, module="bench._noop_worker", actor=NOOP_ASYNC, baseline=True,
              env=(("CONTACTO_BENCH_NOOP_BROKER", "grouped"),)),
        Phase("plain-1tx", "worker", "record_usage, one transaction per message (no group "
              "commit), stock RedisBroker", max(1, n // 2), module="bench._plain_worker",
              actor=ACTOR_RECORD_USAGE, accounts=acc, baseline=True),
        Phase("single", "worker", f"record_usage via workers.balance, {acc} accounts", n,
              module=balance, actor=ACTOR_RECORD_USAGE, accounts=acc, target="ratio"),
        Phase("single-hot", "worker", "record_usage via workers.balance, ONE account",
              max(1, n // 2), module=balance, actor=ACTOR_RECORD_USAGE, accounts=1),
        Phase("batch100", "worker", f"record_usage_batch of 100 via workers.balance, {acc} "
              "accounts", nb, batch=100, module=balance,
              actor=ACTOR_RECORD_USAGE_BATCH, accounts=acc, target="rate"),
        Phase("direct-single", "direct", "apply_usage per event, asyncpg, no broker", n,
              accounts=acc),
        Phase("direct-batch100", "direct", "apply_usage per 100 events, asyncpg, no broker", nb,
              batch=100, accounts=acc),
    ]  # fmt: skip
    if args.phases:
        wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
        unknown = set(wanted) - {p.name for p in phases}
        if unknown:
            raise SystemExit(f"unknown phase(s): {', '.join(sorted(unknown))}")
        return [p for p in phases if p.name in wanted]
    if args.quick:
        skipped = {"noop-sync", "noop-grouped", "plain-1tx", "single-hot"}
        return [p for p in phases if p.name not in skipped]
    return phases


def account_id(phase: str, index: int) -> str:
    return f"{phase}-a{index:05d}"


def amount_of(i: int) -> str:
    """Deterministic amounts from 0.000001 to ~1.0 with six decimals (exact sums to check)."""
    k = (i * 7919) % 999_983 + 1
    return f"{k // 1_000_000}.{k % 1_000_000:06d}"


def event_id(run: str, phase: str, i: int) -> str:
    """Spread over the key space like the upstream's UUIDs (sequential ids would make every
    index insert an append, and the phases' positions in the indexes differ)."""
    digest = hashlib.blake2b(f"{phase}:{i}".encode(), digest_size=12).hexdigest()
    return f"ev-{run}-{digest}"


def make_event(run: str, phase: Phase, i: int, occurred_at: str) -> dict[str, Any]:
    # i * 761 mod n walks every account evenly; consecutive events hit different accounts.
    accounts = max(phase.accounts, 1)
    return {
        "event_id": event_id(run, phase.name, i),
        "account_id": account_id(phase.name, (i * 761) % accounts),
        "amount": amount_of(i),
        "currency": "USD",
        "occurred_at": occurred_at,
        "kind": "voice",
    }


def expected_debits(run: str, phase: Phase, occurred_at: str) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {
        account_id(phase.name, j): Decimal(0) for j in range(phase.accounts)
    }
    for i in range(phase.events):
        ev = make_event(run, phase, i, occurred_at)
        totals[ev["account_id"]] += Decimal(ev["amount"])
    return totals


# --------------------------------------------------------------------------------------------
# CPU accounting from /proc (who used the two cores while the clock ran)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proc:
    ppid: int
    comm: str
    cpu: float  # user + system seconds
    reaped: float  # children's user + system seconds, once the process waited for them


@dataclass(slots=True)
class CpuSnapshot:
    at: float
    procs: dict[int, Proc]
    busy: float  # machine-wide, seconds
    total: float


def _read_procs() -> dict[int, Proc]:
    out: dict[int, Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                raw = fh.read().decode(errors="replace")
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(entry.name)] = Proc(
            int(fields[1]),
            comm,
            (int(fields[11]) + int(fields[12])) / CLK_TCK,
            (int(fields[13]) + int(fields[14])) / CLK_TCK,
        )
    return out


async def code_version() -> str:
    """The commit under test, and which worker-side files differ from it."""
    try:
        head = await asyncio.create_subprocess_exec(
            "git", "-C", str(REPO), "rev-parse", "--short", "HEAD",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        commit = (await head.communicate())[0].decode().strip()
        status = await asyncio.create_subprocess_exec(
            "git", "-C", str(REPO), "status", "--porcelain", "--", "common", "config", "workers",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        dirty = [ln[3:] for ln in (await status.communicate())[0].decode().splitlines()]
    except OSError:
        return "unknown"
    if not commit:
        return "unknown (not a git checkout; use --label)"
    return commit + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def host_facts() -> tuple[str, float]:
    model, mem_gb = "", 0.0
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        mem_gb = round(int(fh.readline().split()[1]) / 1024 / 1024, 1)
    return model, mem_gb


def log_tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def cpu_snapshot() -> CpuSnapshot:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return CpuSnapshot(
        time.perf_counter(), _read_procs(), (total - idle) / CLK_TCK, total / CLK_TCK
    )


def _descendants(procs: dict[int, Proc], roots: Iterable[int]) -> set[int]:
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, proc in procs.items():
            if proc.ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


def cpu_breakdown(
    start: CpuSnapshot,
    end: CpuSnapshot,
    *,
    workers: set[int],
    main: int | None,
    backends: set[int],
) -> dict[str, float]:
    """Cores used per component during [start, end] (CPU seconds / wall seconds)."""
    wall = max(end.at - start.at, 1e-9)
    me = os.getpid()
    worker_pids = _descendants(end.procs, workers) - ({main} if main else set())
    pg_pids = {pid for pid, proc in end.procs.items() if proc.comm == "postgres"}
    spent: dict[str, float] = defaultdict(float)
    for pid, proc in end.procs.items():
        before = start.procs.get(pid)
        if proc.comm == "postgres" and proc.ppid not in pg_pids:
            # the postmaster: backends that exited in the window (connection churn) end up
            # in its reaped-children time
            spent["pg_backends"] += proc.reaped - (before.reaped if before else 0.0)
        delta = proc.cpu - (before.cpu if before else 0.0)
        comm = proc.comm
        if delta <= 0:
            continue
        if pid in worker_pids:
            spent["workers"] += delta
        elif pid == main:
            spent["dramatiq_main"] += delta
        elif pid in backends:
            spent["pg_backends"] += delta
        elif comm == "postgres":
            spent["pg_other"] += delta
        elif comm.startswith("redis-server"):
            spent["redis"] += delta
        elif pid == me:
            spent["bench"] += delta
    busy = end.busy - start.busy
    capacity = end.total - start.total
    cores = {k: round(v / wall, 3) for k, v in spent.items()}
    cores["other"] = round(max(busy - sum(spent.values()), 0.0) / wall, 3)
    cores["idle"] = round(max(capacity - busy, 0.0) / wall, 3)
    return cores


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    phase: str
    kind: str
    what: str
    events: int  # events counted in the measured window
    messages: int
    seconds: float
    rate: float
    method: str
    ratio_to_noop: float | None = None
    target: str = ""
    passed: bool | None = None
    correct: bool | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    txns: dict[str, Any] = field(default_factory=dict)
    cpu_cores: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_us_per_event(self) -> dict[str, float]:
        """CPU microseconds per event by side: steadier than rates when the machine is shared."""
        c, rate = self.cpu_cores, max(self.rate, 1e-9)
        python = c.get("workers", 0.0) + c.get("dramatiq_main", 0.0)
        postgres = c.get("pg_backends", 0.0) + c.get("pg_other", 0.0)
        redis = c.get("redis", 0.0)
        return {
            "python": round(python / rate * 1e6, 1),
            "postgres": round(postgres / rate * 1e6, 1),
            "redis": round(redis / rate * 1e6, 1),
            "total": round((python + postgres + redis) / rate * 1e6, 1),
        }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run = secrets.token_hex(4)
        self.db_name = f"contacto_bench_{self.run}"
        self.admin_url = args.pg_url.rstrip("/") + "/postgres"
        self.db_url = f"{args.pg_url.rstrip('/')}/{self.db_name}"
        self.ns = f"contacto-bench-{self.run}"
        self.occurred_at = datetime.now(UTC).replace(microsecond=0).isoformat()
        self.logdir = Path(tempfile.mkdtemp(prefix=f"contacto-bench-{self.run}-"))
        self.redis: aioredis.Redis = aioredis.Redis.from_url(args.redis_url)
        self.admin: asyncpg.Connection[Any] | None = None
        self.procs: list[asyncio.subprocess.Process] = []
        self.db_created = False
        self.noop_rate: float | None = None

    # ---- environment ----------------------------------------------------------------------

    def child_env(self, namespace: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CONTACTO_", "dramatiq_prom_"))  # no metrics server either
        }
        for name in ("STRIPE_API_KEY", "STRIPE_API_BASE"):
            env.pop(name, None)
        env.update(
            DATABASE_URL=self.db_url,
            REDIS_URL=self.args.redis_url,
            PAYMENT_GATEWAY="simulated",
            LOG_FORMAT="json",
            CONTACTO_BROKER_NAMESPACE=namespace,
            CONTACTO_EVENTS_STREAM=f"{namespace}:events",
            CONTACTO_SIMULATED_PREFIX=f"{namespace}:simgw",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        )
        for item in self.args.worker_env:  # e.g. CONTACTO_USAGE_MAX_IN_FLIGHT=2
            key, _, value = item.partition("=")
            env[key] = value
        return env

    async def setup(self) -> None:
        os.environ.update(self.child_env(self.ns))
        from common.db.migrate import upgrade
        from config.settings import Settings

        self.admin = await asyncpg.connect(self.admin_url)
        say(f"creating database {self.db_name} and migrating")
        self.db_created = True
        await asyncio.to_thread(upgrade, Settings())
        if self.args.setup_sql:
            say(f"EXPERIMENT: running on the bench database: {self.args.setup_sql}")
            conn = await asyncpg.connect(self.db_url)
            try:
                await conn.execute(self.args.setup_sql)
            finally:
                await conn.close()

    async def cleanup(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 10)
        with contextlib.suppress(Exception):
            keys = [k async for k in self.redis.scan_iter(match=f"{self.ns}*", count=1000)]
            for i in range(0, len(keys), 500):
                await self.redis.delete(*keys[i : i + 500])
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        if self.db_created and not self.args.keep:
            with contextlib.suppress(Exception):
                admin = self.admin or await asyncpg.connect(self.admin_url)
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
                say(f"dropped database {self.db_name}")
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await self.admin.close()
        if not self.args.keep:
            shutil.rmtree(self.logdir, ignore_errors=True)
        else:
            say(f"kept database {self.db_name}, namespace {self.ns}*, logs in {self.logdir}")

    async def machine_facts(self) -> dict[str, Any]:
        assert self.admin is not None
        model, mem_gb = host_facts()
        pg = {name: await self.admin.fetchval(f"SHOW {name}") for name in (
            "server_version", "synchronous_commit", "fsync", "shared_buffers", "wal_sync_method",
            "max_connections", "autovacuum")}  # fmt: skip
        info = await self.redis.info("server")
        versions = {}
        for pkg in ("dramatiq", "asyncpg", "redis", "SQLAlchemy"):
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions[pkg] = metadata.version(pkg)
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "code": self.args.label or await code_version(),
            "nproc": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "cpu_model": model,
            "mem_gb": mem_gb,
            "kernel": platform.release(),
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "python": platform.python_version(),
            "postgresql": pg,
            "redis": info.get("redis_version"),
            "packages": versions,
        }

    # ---- database helpers ---------------------------------------------------------------

    async def create_accounts(self, phase: Phase) -> None:
        ids = [account_id(phase.name, j) for j in range(phase.accounts)]
        conn = await asyncpg.connect(self.db_url)
        try:
            # Every phase starts on empty tables: a phase must not inherit the table and index
            # sizes, or the dead row versions, of the phases before it (the planner scans a
            # small `accounts` table whole, and this server may run without autovacuum).
            await conn.execute(
                "TRUNCATE accounts, ledger_entries, usage_events, rejected_usage, recharge_runs, "
                "charges, outbox RESTART IDENTITY CASCADE"
            )
            async with conn.transaction():
                # auto-recharge off (the column default): no recharge runs start.
                await conn.execute(
                    "INSERT INTO accounts (id, currency, balance) "
                    "SELECT id, 'USD', $2 FROM unnest($1::text[]) AS t(id)",
                    ids,
                    OPENING_BALANCE,
                )
                await conn.execute(
                    "INSERT INTO ledger_entries (account_id, amount, balance_after, kind, "
                    "reference) SELECT id, $2, $2, 'credit', 'opening-' || id "
                    "FROM unnest($1::text[]) AS t(id)",
                    ids,
                    OPENING_BALANCE,
                )
            await conn.execute("VACUUM (ANALYZE) accounts")
            await conn.execute("ANALYZE ledger_entries, usage_events")
        finally:
            await conn.close()

    async def backends(self) -> set[int]:
        assert self.admin is not None
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.db_name,
        )
        return {r["pid"] for r in rows}

    async def db_xacts(self) -> tuple[int, int, int]:
        """Commits and rollbacks in the bench database, once every backend of it has exited
        (a backend flushes its counters when it exits)."""
        assert self.admin is not None
        for _ in range(1500):
            if not await self.backends():
                break
            await asyncio.sleep(0.02)
        row = await self.admin.fetchrow(
            "SELECT xact_commit, xact_rollback, sessions FROM pg_stat_database WHERE datname = $1",
            self.db_name,
        )
        assert row is not None
        return int(row["xact_commit"]), int(row["xact_rollback"]), int(row["sessions"])

    async def verify(self, phase: Phase) -> tuple[bool, dict[str, Any], dict[str, Any]]:
        """Exactly-once and exactness: one usage row per event, balances to the micro-unit."""
        expected = await asyncio.to_thread(expected_debits, self.run, phase, self.occurred_at)
        ids = sorted(expected)
        conn = await asyncpg.connect(self.db_url)
        try:
            rows = await conn.fetch(
                """
                SELECT a.id, a.balance, coalesce(sum(l.amount), 0) AS total,
                       count(l.id) FILTER (WHERE l.kind = 'usage') AS usage_rows
                FROM accounts a LEFT JOIN ledger_entries l ON l.account_id = a.id
                WHERE a.id = ANY($1::text[])
                GROUP BY a.id, a.balance
                """,
                ids,
            )
            groups = [
                r["n"]
                for r in await conn.fetch(
                    "SELECT count(*) AS n FROM usage_events WHERE account_id = ANY($1::text[]) "
                    "GROUP BY xmin::text",
                    ids,
                )
            ]
            statement_breaks = await conn.fetchval(
                """
                SELECT count(*) FROM (
                    SELECT balance_after,
                           sum(amount) OVER (PARTITION BY account_id ORDER BY id) AS running
                    FROM ledger_entries WHERE account_id = ANY($1::text[])) t
                WHERE balance_after <> running
                """,
                ids,
            )
            rejected = await conn.fetchval("SELECT count(*) FROM rejected_usage")  # none, ever
            runs = await conn.fetchval(
                "SELECT count(*) FROM recharge_runs WHERE account_id = ANY($1::text[])", ids
            )
        finally:
            await conn.close()
        usage_rows = sum(int(r["usage_rows"]) for r in rows)
        mismatched = [
            r["id"] for r in rows
            if not r["balance"] == r["total"] == OPENING_BALANCE - expected[r["id"]]
        ]  # fmt: skip
        checks = {
            "usage_ledger_rows": usage_rows,
            "usage_events_rows": sum(groups),
            "accounts_checked": len(rows),
            "accounts_wrong_balance": len(mismatched),
            "balance_after_breaks": int(statement_breaks),
            "rejected": int(rejected),
            "recharge_runs": int(runs),
        }
        ok = (
            usage_rows == phase.events
            and sum(groups) == phase.events
            and len(rows) == len(ids)
            and not mismatched
            and statement_breaks == 0
            and rejected == 0
            and runs == 0
        )
        ordered = sorted(groups)
        txns = {
            "count": len(groups),
            "events_per_txn_mean": round(phase.events / len(groups), 2) if groups else None,
            "events_per_txn_p50": ordered[len(ordered) // 2] if ordered else None,
            "events_per_txn_p90": ordered[int(len(ordered) * 0.9)] if ordered else None,
            "events_per_txn_max": ordered[-1] if ordered else None,
        }
        return ok, checks, txns

    # ---- worker phases --------------------------------------------------------------------

    async def prefill(self, namespace: str, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """What RedisBroker.enqueue does (dispatch.lua "enqueue"), pipelined, without touching
        the heartbeat set (which the clock watches)."""
        msgs_key, queue_key = f"{namespace}:{QUEUE_USAGE}.msgs", f"{namespace}:{QUEUE_USAGE}"
        pipe = self.redis.pipeline(transaction=False)
        for n, message in enumerate(messages, 1):
            rid = secrets.token_hex(16)
            pipe.hset(msgs_key, rid, message.copy(options={"redis_message_id": rid}).encode())
            pipe.rpush(queue_key, rid)
            if n % 1000 == 0:
                await pipe.execute()
        await pipe.execute()

    async def spawn(
        self, argv: list[str], env: dict[str, str], log: Path, **kwargs: Any
    ) -> asyncio.subprocess.Process:
        with log.open("ab") as fh:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO, env=env, stdout=kwargs.pop("stdout", fh), stderr=fh,
                start_new_session=True, **kwargs,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    async def stop(self, proc: asyncio.subprocess.Process, timeout_s: float = 30) -> float:
        """SIGTERM to dramatiq's main process (it forwards it), then reap the group."""
        started = time.monotonic()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                say(f"pid {proc.pid} did not stop in {timeout_s}s: killing it")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return time.monotonic() - started

    async def run_worker_phase(self, phase: Phase) -> Result:
        namespace = f"{self.ns}:{phase.name}"
        events = [make_event(self.run, phase, i, self.occurred_at) for i in range(phase.events)]
        if phase.batch == 1:
            messages = [usage_message(ev) for ev in events]
        else:
            messages = [usage_batch_message(chunk) for chunk in chunked(events, phase.batch)]
        if phase.actor not in (ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH):
            messages = [m.copy(actor_name=phase.actor) for m in messages]
        if phase.accounts:
            await self.create_accounts(phase)
        await self.prefill(namespace, messages)
        del events
        threads = self.args.baseline_threads if phase.baseline else self.args.threads
        say(
            f"{phase.name}: {len(messages)} messages queued; starting "
            f"{self.args.processes} x {threads} {phase.module}"
        )
        assert self.admin is not None
        await self.admin.execute("CHECKPOINT")
        xacts0 = await self.db_xacts()

        log = self.logdir / f"{phase.name}.log"
        argv = [sys.executable, "-m", "dramatiq", phase.module, "--processes",
                str(self.args.processes), "--threads", str(threads), "--queues",
                QUEUE_USAGE]  # fmt: skip
        env = self.child_env(namespace) | dict(phase.env)
        proc = await self.spawn(argv, env, log)
        profiler = await self.start_profiler(phase, proc.pid)
        try:
            window = await self.watch(namespace, proc, len(messages), log)
        finally:
            stop_s = await self.stop(proc)
            if profiler is not None:
                await self.stop_profiler(profiler)
        xacts1 = await self.db_xacts()
        dead = await self.redis.hlen(f"{namespace}:{QUEUE_USAGE}.XQ.msgs")

        counted = window["remaining"] * phase.batch
        seconds = window["end"] - window["start"]
        result = Result(
            phase=phase.name, kind=phase.kind, what=phase.what, events=counted,
            messages=window["remaining"], seconds=round(seconds, 3),
            rate=round(counted / seconds, 1),
            method="all consumers fetching -> no unacked message (startup excluded)",
            cpu_cores=window["cpu"],
        )  # fmt: skip
        result.notes = {
            "messages_total": len(messages),
            "processed_before_clock": len(messages) - window["remaining"],
            "consumer_start_skew_s": round(window["start"] - window["first"], 3),
            "stop_s": round(stop_s, 2),
            "dead_lettered": dead,
            "pg_xact_commit": xacts1[0] - xacts0[0],
            "pg_xact_rollback": xacts1[1] - xacts0[1],
            "pg_sessions": xacts1[2] - xacts0[2],
            "log": str(log),
        }
        if phase.accounts:
            result.correct, result.checks, result.txns = await self.verify(phase)
            result.correct = result.correct and dead == 0
        else:
            result.correct = dead == 0
            result.checks = {"dead_lettered": dead, "all_acked": True}
        return result

    async def watch(
        self, namespace: str, proc: asyncio.subprocess.Process, total: int, log: Path
    ) -> dict[str, Any]:
        heartbeats = f"{namespace}:__heartbeats__"
        msgs, delayed = f"{namespace}:{QUEUE_USAGE}.msgs", f"{namespace}:{QUEUE_USAGE}.DQ.msgs"
        first: float | None = None
        start: float | None = None
        remaining = 0
        cpu0: CpuSnapshot | None = None
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while True:
            pipe = self.redis.pipeline(transaction=True)  # one atomic reading
            pipe.zcard(heartbeats)
            pipe.hlen(msgs)
            pipe.hlen(delayed)
            consumers, left, later = await pipe.execute()
            now = time.perf_counter()
            if first is None and consumers:
                first = now
            if start is None and consumers >= self.args.processes:
                start, remaining = now, left + later
                cpu0 = cpu_snapshot()
            if start is not None and left == 0 and later == 0:
                end = time.perf_counter()
                backends = await self.backends()
                cpu1 = cpu_snapshot()
                break
            if proc.returncode is not None:
                tail = log_tail(log)
                raise RuntimeError(f"workers exited ({proc.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"phase timed out with {left + later} of {total} unacked")
            await asyncio.sleep(0.005 if start is None else 0.01)
        assert first is not None and cpu0 is not None
        workers = {pid for pid, p in cpu1.procs.items() if p.ppid == proc.pid}
        cpu = cpu_breakdown(cpu0, cpu1, workers=workers, main=proc.pid, backends=backends)
        return {"first": first, "start": start, "end": end, "remaining": remaining, "cpu": cpu}

    async def start_profiler(self, phase: Phase, pid: int) -> asyncio.subprocess.Process | None:
        if not self.args.profile:
            return None
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out = Path(self.args.profile) / f"{phase.name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [pyspy, "record", "--pid", str(pid), "--subprocesses", "--rate", "200",
                "--format", "raw", "--output", str(out), "--nonblocking"]  # fmt: skip
        if self.args.profile_gil:
            argv.append("--gil")
        return await self.spawn(argv, dict(os.environ), self.logdir / f"{phase.name}.py-spy.log")

    async def stop_profiler(self, proc: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(proc.wait(), 30)  # it ends with its target
        except TimeoutError:
            proc.send_signal(signal.SIGINT)
            await proc.wait()

    # ---- direct asyncpg phases ------------------------------------------------------------

    async def run_direct_phase(self, phase: Phase) -> Result:
        await self.create_accounts(phase)
        assert self.admin is not None
        await self.admin.execute("CHECKPOINT")
        xacts0 = await self.db_xacts()
        env = self.child_env(f"{self.ns}:{phase.name}")
        children: list[asyncio.subprocess.Process] = []
        log = self.logdir / f"{phase.name}.log"
        for index in range(self.args.processes):
            spec = {
                "run": self.run, "phase": phase.name, "events": phase.events,
                "batch": phase.batch, "accounts": phase.accounts, "index": index,
                "of": self.args.processes, "tasks": self.args.connections,
                "occurred_at": self.occurred_at,
            }  # fmt: skip
            argv = [sys.executable, str(SELF), "--direct-child",
                    json.dumps(spec)]  # fmt: skip
            children.append(
                await self.spawn(
                    argv, env, log, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
                )
            )
        say(
            f"{phase.name}: {phase.events} events, {self.args.processes} processes x "
            f"{self.args.connections} connections"
        )
        try:
            for child in children:
                await self._expect(child, "ready", log)
            cpu0 = cpu_snapshot()
            start = time.perf_counter()
            for child in children:
                assert child.stdin is not None
                child.stdin.write(b"go\n")
                await child.stdin.drain()
            applied = 0
            for child in children:
                applied += int(json.loads(await self._expect(child, "{", log))["applied"])
            end = time.perf_counter()
            backends = await self.backends()
            cpu1 = cpu_snapshot()
            for child in children:
                assert child.stdin is not None
                child.stdin.write(b"exit\n")
                await child.stdin.drain()
        finally:
            for child in children:
                await self.stop(child, timeout_s=10)
        xacts1 = await self.db_xacts()
        seconds = end - start
        cpu = cpu_breakdown(
            cpu0, cpu1, workers={c.pid for c in children}, main=None, backends=backends
        )
        result = Result(
            phase=phase.name, kind=phase.kind, what=phase.what, events=phase.events,
            messages=0, seconds=round(seconds, 3), rate=round(phase.events / seconds, 1),
            method=f"{self.args.processes} processes x {self.args.connections} asyncpg "
                   "connections, 'go' -> last 'done'",
            cpu_cores=cpu,
        )  # fmt: skip
        result.notes = {
            "applied_reported": applied,
            "pg_xact_commit": xacts1[0] - xacts0[0],
            "pg_xact_rollback": xacts1[1] - xacts0[1],
            "pg_sessions": xacts1[2] - xacts0[2],
            "log": str(log),
        }
        result.correct, result.checks, result.txns = await self.verify(phase)
        result.correct = result.correct and applied == phase.events
        return result

    async def _expect(self, child: asyncio.subprocess.Process, prefix: str, log: Path) -> str:
        assert child.stdout is not None
        line = (await asyncio.wait_for(child.stdout.readline(), PHASE_TIMEOUT_S)).decode()
        if not line.startswith(prefix):
            tail = log_tail(log)
            raise RuntimeError(f"direct child said {line!r}, expected {prefix!r}:\n{tail}")
        return line

    # ---- all of it ----------------------------------------------------------------------

    async def execute(self, phases: Sequence[Phase]) -> list[Result]:
        results: list[Result] = []
        for phase in phases:
            if phase.kind == "worker":
                result = await self.run_worker_phase(phase)
            else:
                result = await self.run_direct_phase(phase)
            if phase.name == "noop-async":
                self.noop_rate = result.rate
            judge(result, phase, self.noop_rate)
            say(
                f"{phase.name}: {result.rate:,.0f} events/s over {result.seconds:.2f}s, "
                f"exactly-once {'OK' if result.correct else 'FAIL'}"
            )
            results.append(result)
        return results


def judge(result: Result, phase: Phase, noop_rate: float | None) -> None:
    if noop_rate and phase.kind == "worker" and phase.batch == 1 and phase.accounts:
        result.ratio_to_noop = round(result.rate / noop_rate, 3)
    if phase.target == "ratio":
        result.target = f">= {SINGLE_RATIO_TARGET:.0%} of noop-async"
        result.passed = (
            result.ratio_to_noop is not None and result.ratio_to_noop >= SINGLE_RATIO_TARGET
        )
    elif phase.target == "rate":
        result.target = f">= {BATCH_RATE_TARGET:,.0f} events/s"
        result.passed = result.rate >= BATCH_RATE_TARGET


# --------------------------------------------------------------------------------------------
# Direct child: the same functions of common.debits, on connections held for the whole phase
# --------------------------------------------------------------------------------------------


async def direct_child(spec: dict[str, Any]) -> None:
    from common.db.engine import create_engine, raw_connection
    from common.db.errors import retry_conflicts
    from common.recharge.config import PolicyConfig
    from common.usage.debits import DebitResult, apply_usage
    from common.usage.decode import Incoming, decode_batch, decode_single
    from config.settings import Settings

    settings = Settings()
    policy = PolicyConfig(
        retry_min_interval=timedelta(seconds=settings.retry_min_interval_s),
        run_max_charges=settings.run_max_charges,
    )
    phase = Phase(
        spec["phase"], "direct", "", spec["events"], batch=spec["batch"], accounts=spec["accounts"]
    )
    events = [make_event(spec["run"], phase, i, spec["occurred_at"]) for i in range(phase.events)]
    units: list[list[Incoming]] = []
    for k, chunk in enumerate(chunked(events, phase.batch)):
        if k % spec["of"] != spec["index"]:
            continue
        mid = f"direct-{spec['phase']}-{k}"
        if phase.batch == 1:
            actor = ACTOR_RECORD_USAGE
            decoded = decode_single((), chunk[0], message_id=mid, actor_name=actor)
        else:
            actor = ACTOR_RECORD_USAGE_BATCH
            decoded = decode_batch((), {"events": chunk}, message_id=mid, actor_name=actor)
        assert not decoded.rejections, decoded.rejections
        units.append(decoded.items)

    tasks_n: int = spec["tasks"]
    engine = create_engine(settings, pool_size=tasks_n)
    go, all_ready, all_done, leave = (asyncio.Event() for _ in range(4))
    ready = finished = applied = 0

    async def run(mine: list[list[Incoming]]) -> None:
        nonlocal ready, finished, applied
        async with raw_connection(engine) as conn:  # held for the whole phase
            ready += 1
            if ready == tasks_n:
                all_ready.set()
            await go.wait()
            for items in mine:

                async def attempt(items: list[Incoming] = items) -> DebitResult:
                    return await apply_usage(conn, items, [], policy)

                result = await retry_conflicts(attempt)
                if result.rejections:
                    raise RuntimeError(f"rejected: {result.rejections[0].reason}")
                applied += len(result.applied)
            finished += 1
            if finished == tasks_n:
                all_done.set()
            await leave.wait()

    async def until(event: asyncio.Event) -> None:
        waiter = asyncio.create_task(event.wait())
        await asyncio.wait([waiter, *workers], return_when=asyncio.FIRST_COMPLETED)
        for w in workers:
            if w.done():
                w.result()  # raises what the task raised
        if not event.is_set():
            raise RuntimeError("a task ended early")

    loop = asyncio.get_running_loop()
    workers = [asyncio.create_task(run(units[t::tasks_n])) for t in range(tasks_n)]
    await until(all_ready)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    go.set()
    await until(all_done)
    print(json.dumps({"applied": applied}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    leave.set()
    await asyncio.gather(*workers)
    await engine.dispose()


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def fmt_table(results: Sequence[Result]) -> str:
    head = ("phase", "events", "seconds", "events/s", "vs noop", "ev/txn", "target", "result",
            "exactly-once")  # fmt: skip
    rows = [head]
    for r in results:
        per_txn = r.txns.get("events_per_txn_mean")
        rows.append((
            r.phase, f"{r.events:,}", f"{r.seconds:.2f}", f"{r.rate:,.0f}",
            f"{r.ratio_to_noop:.0%}" if r.ratio_to_noop is not None else "-",
            f"{per_txn:g}" if per_txn is not None else "-",
            r.target or "-",
            "-" if r.passed is None else ("PASS" if r.passed else "FAIL"),
            {True: "OK", False: "FAIL", None: "-"}[r.correct]
            if r.kind == "direct" or r.checks.get("usage_ledger_rows") is not None
            else ("all acked" if r.correct else "FAIL"),
        ))  # fmt: skip
    return _grid(rows, right={1, 2, 3, 4, 5})


def fmt_cpu(results: Sequence[Result]) -> str:
    cols = ["workers", "dramatiq_main", "pg_backends", "pg_other", "redis", "bench", "other",
            "idle"]  # fmt: skip
    per = ["python", "postgres", "redis", "total"]
    rows: list[Sequence[str]] = [
        ("phase", *cols, "pg xacts", "rollbacks", "sessions", *(f"{k} us/ev" for k in per))
    ]
    for r in results:
        us = r.cpu_us_per_event
        rows.append((r.phase, *(f"{r.cpu_cores.get(c, 0.0):.2f}" for c in cols),
                     f"{r.notes.get('pg_xact_commit', 0):,}",
                     f"{r.notes.get('pg_xact_rollback', 0):,}",
                     f"{r.notes.get('pg_sessions', 0):,}",
                     *(f"{us[k]:.0f}" for k in per)))  # fmt: skip
    return _grid(rows, right=set(range(1, len(rows[0]))))


def _grid(rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(
    out: TextIO, facts: dict[str, Any], args: argparse.Namespace, results: Sequence[Result]
) -> None:
    pg = facts["postgresql"]
    print(f"Contacto Billing pipeline benchmark, {facts['date']}", file=out)
    print(f"code: {facts['code']}", file=out)
    print(
        f"machine: nproc={facts['nproc']} ({facts['cpus_usable']} usable), "
        f"{facts['cpu_model']}, {facts['mem_gb']} GB, Linux {facts['kernel']}",
        file=out,
    )
    print(
        f"software: Python {facts['python']}, PostgreSQL {pg['server_version']} "
        f"(synchronous_commit={pg['synchronous_commit']}, fsync={pg['fsync']}, "
        f"autovacuum={pg['autovacuum']}), "
        f"Redis {facts['redis']}, " + ", ".join(f"{k} {v}" for k, v in facts["packages"].items()),
        file=out,
    )
    print(
        f"workers: {args.processes} processes x {args.threads} threads (workers.balance), "
        f"x {args.baseline_threads} threads (no-op and plain-1tx references); "
        f"direct: {args.processes} processes x {args.connections} asyncpg connections",
        file=out,
    )
    print(
        "timing (worker phases): queue filled first; clock from the moment every worker "
        "process has fetched\n  (all broker ids in the heartbeat set) to the moment no "
        "message is unacknowledged; events counted\n  = those unacknowledged at the start, "
        "so process start-up is excluded. Direct phases: 'go' to last 'done'.",
        file=out,
    )
    print(file=out)
    print(fmt_table(results), file=out)
    print(file=out)
    print(
        f"cores busy during the measured window (of {facts['cpus_usable']}); transactions and "
        "sessions in the bench database;\nCPU microseconds per event (python = worker "
        "processes + dramatiq main, postgres = backends + other postgres processes):",
        file=out,
    )
    print(fmt_cpu(results), file=out)
    noisy = [(r.phase, r.cpu_cores.get("other", 0.0)) for r in results]
    noisy = [(name, cores) for name, cores in noisy if cores > NOISE_CORES]
    if noisy:
        worst = max(noisy, key=lambda x: x[1])
        print(
            f"\nWARNING: processes outside the benchmark used CPU during {len(noisy)} phase(s) "
            f"(up to {worst[1]:.2f} cores in {worst[0]}): those numbers are perturbed; "
            f"rerun on a quiet machine (load average at start: {facts['loadavg']}).",
            file=out,
        )
    if args.setup_sql:
        print(f"\nEXPERIMENT: schema changed after migrating: {args.setup_sql}", file=out)
    if args.worker_env:
        print(f"\nworker environment: {' '.join(args.worker_env)}", file=out)
    if args.profile:
        print(
            f"\nNOTE: py-spy was attached (--profile {args.profile}); rates are perturbed.",
            file=out,
        )


def to_json(
    facts: dict[str, Any], args: argparse.Namespace, results: Sequence[Result]
) -> dict[str, Any]:
    return {
        "machine": facts,
        "config": {k: v for k, v in vars(args).items() if k != "direct_child"},
        "targets": {
            "single_ratio_to_noop_async": SINGLE_RATIO_TARGET,
            "batch100_events_per_s": BATCH_RATE_TARGET,
        },
        "phases": [dict(vars(r), cpu_us_per_event=r.cpu_us_per_event) for r in results],
        "all_correct": all(r.correct for r in results),
        "all_targets_pass": all(r.passed for r in results if r.passed is not None),
    }


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--events", type=int, default=20_000, help="single-event messages per phase (default 20000)"
    )
    p.add_argument(
        "--batch-events",
        type=int,
        default=200_000,
        help="events sent in batches of 100 (default 200000)",
    )
    p.add_argument(
        "--noop-events",
        type=int,
        default=0,
        help="messages for the no-op phases (default: --events)",
    )
    p.add_argument("--accounts", type=int, default=1000)
    # The balance worker as deployed: its Procfile line's processes and threads (2 x 64); the
    # references as dramatiq runs out of the box (8 threads, its default).
    deployed = procfile.read()["balance"]
    p.add_argument(
        "--processes",
        type=int,
        default=int(deployed.option("--processes", "-p") or 1),
        help="processes of every phase (default: the Procfile's balance worker's, %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=int(deployed.option("--threads", "-t") or 8),
        help="threads of workers.balance phases (default: the Procfile's, %(default)s)",
    )
    p.add_argument(
        "--baseline-threads",
        type=int,
        default=8,
        help="threads of the no-op and plain-1tx reference phases (dramatiq's default)",
    )
    p.add_argument(
        "--connections", type=int, default=8, help="asyncpg connections per direct process"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 3,000 / 30,000 events; no noop-sync, plain-1tx, single-hot",
    )
    p.add_argument("--phases", help="comma-separated subset of phases, in the default order")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write JSON to PATH, or to stdout (table then goes to stderr)",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="attach py-spy to worker phases, raw folded stacks into DIR",
    )
    p.add_argument("--profile-gil", action="store_true", help="py-spy --gil")
    p.add_argument(
        "--setup-sql",
        help="EXPERIMENT: SQL run once on the bench database after migrating (e.g. drop a "
        "constraint to see what it costs)",
    )
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the workers (repeatable), e.g. CONTACTO_USAGE_MAX_IN_FLIGHT=2",
    )
    p.add_argument("--label", help="what code is under test (default: from git)")
    p.add_argument("--keep", action="store_true", help="keep the database, keys and logs")
    p.add_argument(
        "--pg-url",
        default=os.environ.get("CONTACTO_BENCH_PG", DEFAULT_PG),
        help="server URL without database name",
    )
    p.add_argument("--redis-url", default=os.environ.get("CONTACTO_BENCH_REDIS", DEFAULT_REDIS))
    p.add_argument("--direct-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.events = min(args.events, 3_000)
        args.batch_events = min(args.batch_events, 30_000)
    return args


async def main_async(args: argparse.Namespace) -> int:
    bench = Bench(args)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        loop.add_signal_handler(sig, task.cancel)
    try:
        await bench.setup()
        facts = await bench.machine_facts()
        results = await bench.execute(plan(args))
    finally:
        await bench.cleanup()
    table_out = sys.stderr if args.json == "-" else sys.stdout
    report(table_out, facts, args, results)
    if args.json:
        data = json.dumps(to_json(facts, args, results), indent=2, default=str)
        if args.json == "-":
            print(data)
        else:
            await asyncio.to_thread(Path(args.json).write_text, data + "\n")
    if not all(r.correct for r in results):
        print("\nEXACTLY-ONCE CHECK FAILED", file=table_out)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.direct_child:
        asyncio.run(direct_child(json.loads(args.direct_child)))
        return 0
    try:
        return asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; cleaned up")
        return 130


if __name__ == "__main__":
    sys.exit(main())
