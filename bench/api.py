"""`python -m bench.api`: the account API on loopback, as deployed (the Procfile's `web` and
`balance` lines), under load from `wrk`, while the balance worker debits the same accounts.

Phases (each `--duration` seconds, a short warm-up first):

* `get-max`: GET /v1/accounts/{id} over `--connections` keep-alive connections, as fast as they
  go (closed loop): the most the API serves.
* `get-paced`: the same request at about `--rate` requests/s (each connection waits between
  requests, wrk's `delay()`): the latency at the target rate. wrk's clock starts when a request
  is sent, so a stall of the server is not charged to requests that were not sent meanwhile
  (coordinated omission): the paced percentiles are a floor, the `get-max` ones a ceiling.
* `post-batch`: POST /v1/usage with batches of `--batch-size` fresh events, as fast as they go.

During every phase a feeder process publishes `--debit-rate` single `record_usage` messages a
second over the same accounts (what the upstream does today), and the balance worker debits
them and the posted batches. At the end the queue is drained and every event accepted (fed or
posted) must be in the ledger exactly once.

Needs `wrk` (Debian: `apt-get install -y wrk`), PostgreSQL and Redis (like bench.pipeline:
`CONTACTO_BENCH_PG` / `CONTACTO_BENCH_REDIS`, default 127.0.0.1). Creates a database
`contacto_bench_api_<random>` and the namespace `contacto-bench-api-<random>`, both removed at
the end. Numbers and how they were obtained: docs/performance.md, "The account API".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import redis

from bench.pipeline.cpu import CpuSnapshot, cpu_snapshot
from common import procfile

REPO = Path(__file__).resolve().parents[1]
ACCOUNT_PREFIX = "bench-"
OPENING_BALANCE = Decimal("1000000")  # no account comes near zero: no recharge, no suspension
TARGET_GET_RPS = 1500
TARGET_GET_P99_MS = 25.0
TARGET_POST_EVENTS = 10_000

GET_LUA = """
local token = os.getenv("BENCH_TOKEN")
local accounts = tonumber(os.getenv("BENCH_ACCOUNTS"))
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local n = 0
local headers = {["Authorization"] = "Bearer " .. token}
function setup(thread)
  thread:set("offset", math.random(accounts))
end
function request()
  n = n + 1
  return wrk.format("GET", "/v1/accounts/%s" .. ((n + offset) %% accounts + 1), headers)
end
function delay()
  return pause
end
"""
POST_LUA = """
local token = os.getenv("BENCH_TOKEN")
local accounts = tonumber(os.getenv("BENCH_ACCOUNTS"))
local size = tonumber(os.getenv("BENCH_BATCH"))
local at = os.getenv("BENCH_OCCURRED_AT")
local run = os.getenv("BENCH_RUN")
local headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}
local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local n = 0
function request()
  local parts = {}
  for i = 1, size do
    n = n + 1
    parts[i] = string.format(
      '{"event_id":"%%s-%%d-%%d","account_id":"%s%%d","amount":"0.000100",'
      .. '"currency":"USD","occurred_at":"%%s","kind":"sms"}',
      run, tid, n, (n * 7 + tid) %% accounts + 1, at)
  end
  return wrk.format("POST", "/v1/usage", headers, '{"events":[' .. table.concat(parts, ",") .. ']}')
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    non_2xx: int
    errors: str
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float


@dataclass
class PhaseResult:
    name: str
    wrk: WrkResult
    debits_per_s: float  # usage ledger rows written per second during the phase
    cores: dict[str, float]
    events_per_s: float | None = None  # post-batch: events accepted per second


@dataclass
class Run:
    label: str
    started_at: str
    loadavg_before: str
    web_workers: int
    accounts: int
    connections: int
    debit_rate: int
    feed_batch: int  # events per fed message (1: single record_usage messages)
    phases: list[PhaseResult] = field(default_factory=list)
    fed: int = 0
    posted: int = 0
    debited: int = 0
    exactly_once: str = "not checked"
    loadavg_after: str = ""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def git_label() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
            text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --- processes -------------------------------------------------------------------------------


class Child:
    """A Procfile line run as honcho runs it: `/bin/sh -c LINE`, a process group of its own."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        entry = procfile.read(REPO / "Procfile")[name]
        self.name = name
        self.log = logs / f"{name}.log"
        self._handle = self.log.open("wb")
        self.popen = subprocess.Popen(
            ["/bin/sh", "-c", entry.command], cwd=REPO, env=env, stdout=self._handle,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_for(self, text: str, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.log.read_text(errors="replace").count(text) < count:
            if self.popen.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"{self.name} did not start:\n{tail}")
            time.sleep(0.1)

    def pids(self) -> set[int]:
        """The process group's members."""
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[2]) == self.popen.pid:
                        found.add(int(entry.name))
        return found

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=20)
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._handle.close()


def feed(env: dict[str, str], rate: int, batch: int, accounts: int, stop: Any, sent: Any) -> None:
    """The feeder process: `rate` events a second, until `stop`: single `record_usage` messages
    (batch 1, what the upstream's dramatiq producer sends) or `record_usage_batch` messages of
    `batch` events (what POST /v1/usage enqueues)."""
    os.environ.update(env)
    from common.broker.factory import build_broker
    from common.broker.publish import usage_batch_message, usage_message
    from config.settings import Settings

    broker = build_broker(Settings())
    run = uuid.uuid4().hex[:8]
    n = 0
    tick = 0.01
    started = time.monotonic()

    def event(i: int) -> dict[str, str]:
        return {
            "event_id": f"feed-{run}-{i}",
            "account_id": f"{ACCOUNT_PREFIX}{i % accounts + 1}",
            "amount": "0.001000",
            "currency": "USD",
            "occurred_at": datetime.now(UTC).isoformat(),
            "kind": "voice",
        }

    while not stop.is_set():
        due = int((time.monotonic() - started) * rate)
        # A feeder starved of CPU falls behind and catches up in a burst: it must still stop
        # when told, or it goes on publishing while the fed count is read (seen: 16,338 fed
        # events not counted, on a loaded machine).
        while n + batch <= due and not stop.is_set():
            if batch == 1:
                broker.enqueue(usage_message(event(n + 1)))
            else:
                broker.enqueue(usage_batch_message([event(n + i) for i in range(1, batch + 1)]))
            n += batch
            sent.value = n
        time.sleep(tick)
    broker.close()


# --- wrk -------------------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert match, text
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(out: str) -> WrkResult:
    percentiles = {
        int(m[1]): _ms(m[2]) for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+\w+)\s*$", out, re.M)
    }
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    assert done, out
    seconds = _ms(done[2] + done[3]) / 1000
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    requests = int(done[1])
    return WrkResult(
        requests=requests,
        seconds=round(seconds, 2),
        rps=round(requests / seconds, 1),
        non_2xx=int(non[1]) if non else 0,
        errors=errors[1].strip() if errors else "",
        p50_ms=percentiles.get(50, 0.0),
        p75_ms=percentiles.get(75, 0.0),
        p90_ms=percentiles.get(90, 0.0),
        p99_ms=percentiles.get(99, 0.0),
    )


def run_wrk(
    url: str, script: Path, env: dict[str, str], *, connections: int, threads: int, seconds: float
) -> tuple[WrkResult, float, float]:
    """wrk's result, and the perf-counter window it ran in."""
    argv = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
        "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out), started, time.perf_counter()


# --- accounting ------------------------------------------------------------------------------


def cores(
    start: CpuSnapshot, end: CpuSnapshot, groups: dict[str, set[int]], pg_ours: set[int]
) -> dict[str, float]:
    """Cores used per component during the window; `other` is whoever else was on the machine
    (other PostgreSQL backends included)."""
    wall = max(end.at - start.at, 1e-9)
    spent: dict[str, float] = {}
    accounted = 0.0
    for pid, proc in end.procs.items():
        before = start.procs.get(pid)
        delta = proc.cpu - (before.cpu if before else 0.0)
        if delta <= 0:
            continue
        name = next((n for n, pids in groups.items() if pid in pids), None)
        if name is None and pid in pg_ours:
            name = "postgres (bench db)"
        elif name is None and proc.comm.startswith("redis-server"):
            name = "redis"
        elif name is None and proc.comm == "wrk":
            name = "wrk"
        if name is not None:
            spent[name] = spent.get(name, 0.0) + delta
            accounted += delta
    busy = end.busy - start.busy
    result = {k: round(v / wall, 2) for k, v in sorted(spent.items())}
    result["other (not this bench)"] = round(max(busy - accounted, 0.0) / wall, 2)
    result["idle"] = round(max((end.total - start.total) - busy, 0.0) / wall, 2)
    return result


# --- the run ---------------------------------------------------------------------------------


async def seed(db_url: str, accounts: int) -> str:
    """Accounts with a large opening credit (through the support path), and a token."""
    from common.accounts.support import create_account, credit_account
    from common.credentials.tokens import create_token

    conn = await asyncpg.connect(db_url)
    try:
        for i in range(1, accounts + 1):
            account = f"{ACCOUNT_PREFIX}{i}"
            await create_account(conn, account, "USD")
            await credit_account(conn, account, OPENING_BALANCE, "bench", f"opening-{account}")
        await conn.execute("VACUUM ANALYZE accounts")
        return (await create_token(conn, "bench")).token
    finally:
        await conn.close()


async def count_debits(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usage_events"))
    finally:
        await conn.close()


async def bench_backends(admin_url: str, database: str) -> set[int]:
    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
        return {r["pid"] for r in rows}
    finally:
        await conn.close()


def queue_empty(redis_url: str, namespace: str) -> bool:
    client = redis.Redis.from_url(redis_url)
    try:
        ready = client.llen(f"{namespace}:usage")
        acks = sum(client.scard(k) for k in client.scan_iter(f"{namespace}:__acks__.*"))
        return ready == 0 and acks == 0
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.api", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--connections", type=int, default=16, help="wrk's, for get-max")
    parser.add_argument("--post-connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="wrk's threads")
    parser.add_argument("--rate", type=int, default=TARGET_GET_RPS, help="get-paced, requests/s")
    parser.add_argument("--debit-rate", type=int, default=1000, help="fed events/s")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--feed-batch", type=int, default=1, help="events per fed message (1: record_usage)"
    )
    parser.add_argument("--web-workers", type=int, help="CONTACTO_WEB_WORKERS (default: its)")
    parser.add_argument("--web-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--phases", default="get-max,get-paced,post-batch")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the database and logs")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        say("bench.api needs wrk: apt-get install -y wrk")
        return 2
    pg = os.environ.get("CONTACTO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432").rstrip("/")
    redis_url = os.environ.get("CONTACTO_BENCH_REDIS", "redis://127.0.0.1:6379/0")
    run_id = uuid.uuid4().hex[:8]
    database, namespace = f"contacto_bench_api_{run_id}", f"contacto-bench-api-{run_id}"
    db_url, admin_url = f"{pg}/{database}", f"{pg}/postgres"
    work = Path(tempfile.mkdtemp(prefix=f"bench-api-{run_id}-"))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CONTACTO_", "STRIPE_", "PORT"))
    }
    env.update(
        DATABASE_URL=db_url, REDIS_URL=redis_url, CONTACTO_BROKER_NAMESPACE=namespace,
        CONTACTO_EVENTS_STREAM=f"{namespace}:events", CONTACTO_SIMULATED_PREFIX=f"{namespace}:sim",
        PAYMENT_GATEWAY="simulated", LOG_FORMAT="json", PYTHONUNBUFFERED="1",
        CONTACTO_PYTHON=sys.executable, CONTACTO_PROM_DIR=str(work / "prom"),
        CONTACTO_BALANCE_METRICS_PORT=str(free_port()),
    )  # fmt: skip
    port = free_port()
    web_env = env | {"PORT": str(port), "WEB_HOST": "127.0.0.1"}
    if args.web_workers:
        web_env["CONTACTO_WEB_WORKERS"] = str(args.web_workers)
    for item in args.web_env:
        key, _, value = item.partition("=")
        web_env[key] = value
    from config.settings import Settings, WebSettings

    workers = WebSettings.model_validate(
        {k: v for k, v in web_env.items() if k.startswith("CONTACTO_WEB")}
    )
    result = Run(
        label=git_label(), started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        loadavg_before=loadavg(), web_workers=workers.workers, accounts=args.accounts,
        connections=args.connections, debit_rate=args.debit_rate, feed_batch=args.feed_batch,
    )  # fmt: skip
    children: list[Child] = []
    stop = multiprocessing.Event()
    sent = multiprocessing.Value("q", 0)
    feeder: Any = None  # a forked multiprocessing process
    os.environ["DATABASE_URL"] = db_url
    try:
        from common.db.migrate import upgrade

        say(f"bench.api {result.label}: database {database}, load {result.loadavg_before}")
        upgrade(Settings(DATABASE_URL=db_url))
        token = asyncio.run(seed(db_url, args.accounts))
        web = Child("web", web_env, work)
        children.append(web)
        web.wait_for("web.ready", workers.workers)
        balance = Child("balance", env, work)
        children.append(balance)
        procs = int(procfile.read(REPO / "Procfile")["balance"].option("--processes") or 1)
        balance.wait_for("ready for action", procs)
        feeder = multiprocessing.get_context("fork").Process(
            target=feed,
            args=(env, args.debit_rate, args.feed_batch, args.accounts, stop, sent),
            daemon=True,
        )
        feeder.start()
        url = f"http://127.0.0.1:{port}"
        get_lua, post_lua = work / "get.lua", work / "post.lua"
        get_lua.write_text(GET_LUA % ACCOUNT_PREFIX)
        post_lua.write_text(POST_LUA % ACCOUNT_PREFIX)
        wrk_env = dict(os.environ) | {
            "BENCH_TOKEN": token, "BENCH_ACCOUNTS": str(args.accounts),
            "BENCH_BATCH": str(args.batch_size), "BENCH_RUN": run_id,
            "BENCH_OCCURRED_AT": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        }  # fmt: skip
        say(
            f"web on {url} ({workers.workers} workers); feeding {args.debit_rate} events/s "
            f"in messages of {args.feed_batch}"
        )
        # Warm-up: connections, prepared statements, the feeder's steady state.
        run_wrk(url, get_lua, wrk_env, connections=args.connections, threads=args.threads,
                seconds=3)  # fmt: skip
        for phase in args.phases.split(","):
            script, conns, extra = get_lua, args.connections, {}
            if phase == "get-paced":
                # Each connection waits `delay` ms between requests: about --rate in total.
                # The wait comes on top of each request's own time (2-3 ms), so aim 10 % higher
                # (seen: 1,373/s delivered for 1,500 asked without it).
                conns = max(args.connections * 2, 8)
                delay_ms = int(conns * 1000 / (args.rate * 1.1))
                extra = {"BENCH_DELAY_MS": str(max(delay_ms, 0))}
            elif phase == "post-batch":
                script, conns = post_lua, args.post_connections
            groups = {
                "web": web.pids(),
                "balance worker": balance.pids(),
                "feeder": {feeder.pid or 0},
            }
            backends = asyncio.run(bench_backends(admin_url, database))
            debits_before = asyncio.run(count_debits(db_url))
            before = cpu_snapshot()
            wrk, _, _ = run_wrk(url, script, wrk_env | extra, connections=conns,
                                threads=args.threads, seconds=args.duration)  # fmt: skip
            after = cpu_snapshot()
            debits = asyncio.run(count_debits(db_url)) - debits_before
            wall = after.at - before.at
            phase_result = PhaseResult(
                phase, wrk, round(debits / wall, 1), cores(before, after, groups, backends)
            )
            if phase == "post-batch":
                accepted = wrk.requests - wrk.non_2xx
                result.posted += accepted * args.batch_size
                phase_result.events_per_s = round(accepted * args.batch_size / wrk.seconds, 1)
            result.phases.append(phase_result)
            say(f"  {phase}: {json.dumps(asdict(phase_result))}")
        stop.set()
        feeder.join(timeout=10)
        if feeder.is_alive():
            feeder.terminate()
            feeder.join()
        result.fed = int(sent.value)
        say("draining the queue")
        deadline = time.monotonic() + 300
        while not queue_empty(redis_url, namespace) and time.monotonic() < deadline:
            time.sleep(0.5)
        result.debited = asyncio.run(count_debits(db_url))
        # wrk counts the responses it read; a request cut at the end of a phase may still have
        # been accepted: at most one batch per connection more.
        slack = args.post_connections * args.batch_size if "post-batch" in args.phases else 0
        expected = result.fed + result.posted
        result.exactly_once = "OK" if expected <= result.debited <= expected + slack else "FAILED"
        result.loadavg_after = loadavg()
    finally:
        stop.set()
        if feeder is not None and feeder.is_alive():
            feeder.terminate()
        for child in reversed(children):
            child.stop()
        _cleanup(admin_url, database, redis_url, namespace, keep=args.keep)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept: database {database}, logs in {work}")
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0 if result.exactly_once == "OK" else 1


def _cleanup(admin_url: str, database: str, redis_url: str, namespace: str, *, keep: bool) -> None:
    if keep:
        return

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()

    with contextlib.suppress(Exception):
        asyncio.run(drop())
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


def report(run: Run) -> None:
    print(f"bench.api {run.label} at {run.started_at}; web workers {run.web_workers}; "
          f"{run.accounts} accounts; fed {run.debit_rate} events/s in messages of "
          f"{run.feed_batch}; load average {run.loadavg_before} -> "
          f"{run.loadavg_after}")  # fmt: skip
    print(f"{'phase':<11} {'req/s':>8} {'events/s':>9} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'non-2xx':>7} {'debits/s':>8}  cores")  # fmt: skip
    for p in run.phases:
        events = f"{p.events_per_s:,.0f}" if p.events_per_s is not None else "-"
        shown = ", ".join(f"{k} {v:.2f}" for k, v in p.cores.items())
        print(f"{p.name:<11} {p.wrk.rps:>8,.0f} {events:>9} {p.wrk.p50_ms:>7.2f} "
              f"{p.wrk.p90_ms:>7.2f} {p.wrk.p99_ms:>7.2f} {p.wrk.non_2xx:>7} "
              f"{p.debits_per_s:>8,.0f}  {shown}")  # fmt: skip
    for p in run.phases:
        if p.name == "get-paced":
            ok = p.wrk.rps >= TARGET_GET_RPS * 0.98 and p.wrk.p99_ms <= TARGET_GET_P99_MS
            verdict = "PASS" if ok else "MISS"
            print(f"target GET >= {TARGET_GET_RPS}/s with p99 <= {TARGET_GET_P99_MS:g} ms: "
                  f"{p.wrk.rps:,.0f}/s, p99 {p.wrk.p99_ms:.2f} ms: {verdict}")  # fmt: skip
        if p.name == "post-batch" and p.events_per_s is not None:
            ok = p.events_per_s >= TARGET_POST_EVENTS
            print(f"target POST >= {TARGET_POST_EVENTS:,} events/s: {p.events_per_s:,.0f}: "
                  f"{'PASS' if ok else 'MISS'}")  # fmt: skip
    print(f"exactly once: fed {run.fed:,} + posted {run.posted:,}; debited {run.debited:,}: "
          f"{run.exactly_once}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
