"""`python -m bench.hostile`: how long the balance worker takes on each hostile message.

Every case of the corpus (tests/support/hostile.py) is sent alone to an idle balance worker
(the Procfile's `balance` line: its processes and threads), and timed from the enqueue to the
moment its rejection is committed (`rejected_usage`); a good event sent right after it times
how long the worker was kept from good traffic. Prints the cases slowest first.

Needs PostgreSQL and Redis (`CONTACTO_BENCH_PG`, `CONTACTO_BENCH_REDIS`; 127.0.0.1 by default);
creates and drops `contacto_bench_hostile_<random>` and its own broker namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import redis

from bench.pipeline import REPO
from bench.pipeline.console import say
from bench.pipeline.database import BenchDatabase, open_accounts
from bench.pipeline.processes import Processes, child_env, stop
from common import procfile
from tests.support.hostile import CASES, good_event

POLL_S = 0.005


async def wait_kept(conn: asyncpg.Connection[Any], message_id: str, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await conn.fetchval("SELECT 1 FROM rejected_usage WHERE message_id = $1", message_id):
            return time.monotonic()
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"message {message_id} not kept within {timeout_s} s")


async def wait_debited(conn: asyncpg.Connection[Any], event_id: str, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await conn.fetchval("SELECT 1 FROM usage_events WHERE event_id = $1", event_id):
            return time.monotonic()
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"event {event_id} not debited within {timeout_s} s")


async def run(pg_url: str, redis_url: str) -> int:
    from common.broker.factory import build_broker
    from common.broker.publish import usage_message
    from config.settings import Settings

    suffix = uuid.uuid4().hex[:8]
    database = BenchDatabase(pg_url, f"contacto_bench_hostile_{suffix}")
    namespace = f"contacto-bench-hostile-{suffix}"
    env = child_env(db_url=database.url, redis_url=redis_url, namespace=namespace, worker_env=())
    os.environ.update(DATABASE_URL=database.url, REDIS_URL=redis_url)
    processes = Processes()
    work = Path(tempfile.mkdtemp(prefix="contacto-bench-hostile-"))
    results: list[tuple[str, float, float]] = []
    try:
        await database.create(None)
        conn = await asyncpg.connect(database.url)
        account = "hostile-1"
        await open_accounts(conn, [account], currency="EUR")
        # The Procfile's words (its metrics variables left out); bin/python: the venv's Python.
        argv = list(procfile.read(REPO / "Procfile")["balance"].argv)
        worker = await processes.spawn(argv, env, work / "balance.log")
        broker = build_broker(Settings(REDIS_URL=redis_url, CONTACTO_BROKER_NAMESPACE=namespace))
        # Warm-up: the worker is up and has connected when a good event is debited.
        warm = good_event(account)
        broker.enqueue(usage_message(warm))
        await wait_debited(conn, warm["event_id"], 60)
        say(f"balance worker up; {len(CASES)} cases, one at a time")
        for case in CASES:
            message = case.build(account)
            after = good_event(account)
            sent = time.monotonic()
            broker.enqueue(message)
            broker.enqueue(usage_message(after))
            kept = await wait_kept(conn, message.message_id, 120)
            debited = await wait_debited(conn, after["event_id"], 120)
            results.append((case.name, (kept - sent) * 1000, (debited - sent) * 1000))
        await conn.close()
        broker.close()
        await stop(worker)
        alive = "alive to the end"
    finally:
        await processes.kill_all()
        await database.drop()
        await database.close()
        client = redis.Redis.from_url(redis_url)
        with contextlib.suppress(Exception):
            keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
            if keys:
                client.delete(*keys)
        client.close()
    print(f"{'case':<28} {'kept ms':>9} {'next good ms':>13}")
    for name, kept_ms, next_ms in sorted(results, key=lambda r: -r[1]):
        print(f"{name:<28} {kept_ms:>9.1f} {next_ms:>13.1f}")
    print(f"{len(results)} cases kept; the worker {alive}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.parse_args()
    pg_url = os.environ.get("CONTACTO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    redis_url = os.environ.get("CONTACTO_BENCH_REDIS", "redis://127.0.0.1:6379/0")
    return asyncio.run(run(pg_url, redis_url))


if __name__ == "__main__":
    sys.exit(main())
