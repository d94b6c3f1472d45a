"""`python -m bench.scaling`: balance-worker throughput by number of processes, on each broker.

For each broker (Redis, RabbitMQ) and each process count in `--processes`, a fresh database and
broker namespace (Redis) or vhost (RabbitMQ): `--events` usage events are queued first, as
`record_usage_batch` messages of `--batch-size` (or single `record_usage` messages with
`--batch-size 1`), over `--accounts` accounts; then the balance worker (the Procfile's command
with `--processes N`) is started and timed from its first debit to its last. Throughput =
events / that time. Drain-from-backlog measures the worker, not the producer.

Needs PostgreSQL, Redis and RabbitMQ on 127.0.0.1 (`rabbitmqctl` to make the vhosts);
`CONTACTO_BENCH_PG`, `CONTACTO_BENCH_REDIS`, `CONTACTO_BENCH_AMQP` override.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import redis

from bench.pipeline import REPO
from bench.pipeline.console import say
from bench.pipeline.database import BenchDatabase, open_accounts
from bench.pipeline.processes import Processes, child_env, stop
from common import procfile


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


async def one(args: argparse.Namespace, broker_kind: str, processes_n: int) -> float:
    from common.broker.factory import build_broker
    from common.broker.publish import usage_batch_message, usage_message
    from config.settings import Settings

    suffix = uuid.uuid4().hex[:8]
    database = BenchDatabase(args.pg, f"contacto_bench_scaling_{suffix}")
    namespace = f"contacto-bench-scaling-{suffix}"
    extra = []
    vhost = None
    if broker_kind == "rabbitmq":
        vhost = namespace
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        extra = [f"BROKER_URL={args.amqp}/{vhost}"]
    env = child_env(
        db_url=database.url, redis_url=args.redis, namespace=namespace, worker_env=extra
    )
    os.environ.update(DATABASE_URL=database.url, REDIS_URL=args.redis)
    work = Path(tempfile.mkdtemp(prefix="contacto-bench-scaling-"))
    processes = Processes()
    try:
        await database.create(None)
        conn = await asyncpg.connect(database.url)
        ids = [f"s-{i}" for i in range(args.accounts)]
        await open_accounts(conn, ids)
        settings = Settings(
            REDIS_URL=args.redis,
            CONTACTO_BROKER_NAMESPACE=namespace,
            BROKER_URL=None if vhost is None else f"{args.amqp}/{vhost}",
        )
        broker = build_broker(settings)
        at = datetime.now(UTC).isoformat()
        events = [
            {
                "event_id": f"{suffix}-{n}",
                "account_id": ids[n % len(ids)],
                "amount": "0.000100",
                "currency": "USD",
                "occurred_at": at,
                "kind": "voice",
            }
            for n in range(args.events)
        ]
        if args.batch_size == 1:
            for ev in events:
                broker.enqueue(usage_message(ev))
        else:
            for i in range(0, len(events), args.batch_size):
                broker.enqueue(usage_batch_message(events[i : i + args.batch_size]))
        broker.close()
        argv = list(procfile.read(REPO / "Procfile")["balance"].argv)
        argv[argv.index("--processes") + 1] = str(processes_n)
        worker = await processes.spawn(argv, env, work / "balance.log")
        count = "SELECT count(*), min(recorded_at), max(recorded_at) FROM usage_events"
        deadline = time.monotonic() + 600
        while True:
            row = await conn.fetchrow(count)
            assert row is not None
            if row[0] >= args.events:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{row[0]} of {args.events} debited after 600 s")
            await asyncio.sleep(0.2)
        seconds = (row[2] - row[1]).total_seconds()
        await conn.close()
        await stop(worker)
        return float(args.events / seconds)
    finally:
        await processes.kill_all()
        await database.drop()
        await database.close()
        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        if vhost is not None:
            rabbitmqctl("delete_vhost", vhost)


async def run(args: argparse.Namespace) -> int:
    results: dict[tuple[str, int], float] = {}
    for broker_kind in args.brokers:
        for n in args.processes:
            results[broker_kind, n] = await one(args, broker_kind, n)
            say(f"{broker_kind}, {n} process(es): {results[broker_kind, n]:,.0f} events/s")
    kind = "single messages" if args.batch_size == 1 else f"batches of {args.batch_size}"
    print(f"bench.scaling: {args.events:,} events in {kind} over {args.accounts} accounts; "
          f"threads per process as the Procfile; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'broker':<10}" + "".join(f"{n:>10} proc" for n in args.processes))
    for broker_kind in args.brokers:
        cells = "".join(f"{results[broker_kind, n]:>15,.0f}" for n in args.processes)
        print(f"{broker_kind:<10}{cells}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--processes", type=ints, default=[1, 2, 3, 4])
    parser.add_argument("--brokers", type=lambda s: s.split(","), default=["redis", "rabbitmq"])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--accounts", type=int, default=1000)
    args: Any = parser.parse_args()
    args.pg = os.environ.get("CONTACTO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    args.redis = os.environ.get("CONTACTO_BENCH_REDIS", "redis://127.0.0.1:6379/0")
    args.amqp = os.environ.get("CONTACTO_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
