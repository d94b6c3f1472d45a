"""`python -m bench.maintenance_cost`: what dramatiq's broker maintenance costs.

The relay runs it every CONTACTO_BROKER_MAINTENANCE_INTERVAL_S on each queue and delay queue
(common/broker/maintenance.py: 6 calls of dramatiq's dispatch script), and every worker command
runs it with a chance of CONTACTO_BROKER_MAINTENANCE_CHANCE per million. Its work, in
dispatch.lua: list the workers whose heartbeat expired; for each, move its unacked messages of
that queue back and, with a KEYS over the whole Redis database, drop it once it holds none; then
expire old dead letters. So the cost is a floor (round trips, two sorted-set range reads) plus,
only while a dead worker is still listed, its messages and a scan of every key in the database.

Scenarios (time per `run_maintenance` call, median and max of `--repeat` calls, wall clock from
this client, so round trips included; `ping` is one round trip for scale):

* `idle`: an empty namespace.
* `backlog`: `--messages` ready messages on each queue (maintenance does not touch them).
* `dead-letters`: `--messages` dead letters per queue, none expired.
* `db-keys`: `--db-keys` unrelated keys in the database, no dead worker (no KEYS then).
* `dead-workers`: `--dead-workers` workers died holding `--unacked` messages each, with
  `--db-keys` keys in the database: the first call requeues and runs KEYS per worker and
  queue (`first`), the next ones find nobody (`after`).

Everything lives under the namespace `contacto-bench-maint-<random>`, deleted at the end (the
KEYS cost depends on the database's size, not on the pattern, so the filler keys are ours too):
safe on a shared Redis database. Numbers: docs/performance.md, "Broker maintenance".
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from common.broker.factory import build_redis_broker
from common.broker.maintenance import maintained_queues, run_maintenance
from common.names import QUEUES, namespace_pattern, queue_key
from config.settings import Settings

HEARTBEAT_TIMEOUT_MS = 1000


def _broker(redis_url: str, namespace: str) -> RedisBroker:
    return build_redis_broker(
        Settings(
            REDIS_URL=redis_url,
            CONTACTO_BROKER_NAMESPACE=namespace,
            CONTACTO_BROKER_HEARTBEAT_TIMEOUT_MS=HEARTBEAT_TIMEOUT_MS,
            CONTACTO_BROKER_MAINTENANCE_CHANCE=0,
        )
    )


def _timings(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, max) in milliseconds."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples)


def _message(queue: str, i: int) -> bytes:
    data: bytes = Message(
        queue_name=queue, actor_name="noop", args=(), kwargs={"i": i}, options={}
    ).encode()
    return data


def _fill_ready(client: redis.Redis, namespace: str, n: int) -> None:
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        for i in range(n):
            mid = f"m-{queue}-{i}"
            pipe.hset(f"{queue_key(namespace, queue)}.msgs", mid, _message(queue, i))
            pipe.rpush(queue_key(namespace, queue), mid)
            if len(pipe) >= 2000:
                pipe.execute()
    pipe.execute()


def _fill_dead(client: redis.Redis, namespace: str, n: int) -> None:
    now_ms = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        for i in range(n):
            mid = f"x-{queue}-{i}"
            pipe.hset(f"{queue_key(namespace, queue)}.XQ.msgs", mid, _message(queue, i))
            pipe.zadd(f"{queue_key(namespace, queue)}.XQ", {mid: now_ms})
            if len(pipe) >= 2000:
                pipe.execute()
    pipe.execute()


def _fill_keys(client: redis.Redis, namespace: str, n: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"{namespace}:filler:{i}", b"x")
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()


def _kill_workers(client: redis.Redis, namespace: str, workers: int, unacked: int) -> None:
    """`workers` dead workers, each holding `unacked` fetched messages of every queue."""
    dead_at = int(time.time() * 1000) - 10 * HEARTBEAT_TIMEOUT_MS
    pipe = client.pipeline(transaction=False)
    for w in range(workers):
        worker_id = f"dead-{w}-{uuid.uuid4()}"
        pipe.zadd(f"{namespace}:__heartbeats__", {worker_id: dead_at})
        for queue in QUEUES:
            acks = f"{namespace}:__acks__.{worker_id}.{queue}"
            for i in range(unacked):
                mid = f"u-{w}-{queue}-{i}"
                pipe.hset(f"{queue_key(namespace, queue)}.msgs", mid, _message(queue, i))
                pipe.sadd(acks, mid)
        pipe.execute()


def _clear(client: redis.Redis, namespace: str) -> None:
    keys = list(client.scan_iter(match=namespace_pattern(namespace), count=5000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    namespace = f"contacto-bench-maint-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(args.redis_url)
    broker = _broker(args.redis_url, namespace)
    rows: list[dict[str, Any]] = []

    def measure(scenario: str, note: str = "") -> None:
        run_maintenance(broker)  # warm: script cached, Lua stack probed
        median, worst = _timings(lambda: run_maintenance(broker), args.repeat)
        rows.append({"scenario": scenario, "median_ms": median, "max_ms": worst, "note": note})

    try:
        rows.append(
            dict(
                zip(
                    ("median_ms", "max_ms"),
                    _timings(client.ping, args.repeat),
                    strict=True,
                ),
                scenario="ping",
                note="one round trip",
            )
        )
        measure("idle", f"{len(maintained_queues())} script calls")
        _fill_ready(client, namespace, args.messages)
        measure("backlog", f"{args.messages} ready messages per queue")
        _clear(client, namespace)
        _fill_dead(client, namespace, args.messages)
        measure("dead-letters", f"{args.messages} dead letters per queue")
        _clear(client, namespace)
        _fill_keys(client, namespace, args.db_keys)
        db_size = int(client.dbsize())
        measure("db-keys", f"{db_size} keys in the database, no dead worker")
        for workers in args.dead_workers:
            _kill_workers(client, namespace, workers, args.unacked)
            started = time.perf_counter()
            run_maintenance(broker)
            first = (time.perf_counter() - started) * 1000
            back = sum(int(client.llen(queue_key(namespace, q))) for q in QUEUES)
            expected = workers * args.unacked * len(QUEUES)
            assert back == expected, (back, expected)
            note = (
                f"{workers} dead x {args.unacked} unacked x {len(QUEUES)} queues, "
                f"{db_size} keys: all {back} back"
            )
            rows.append(
                {
                    "scenario": f"dead-workers={workers} first",
                    "median_ms": first,
                    "max_ms": first,
                    "note": note,
                }
            )
            median, worst = _timings(lambda: run_maintenance(broker), args.repeat)
            rows.append(
                {
                    "scenario": f"dead-workers={workers} after",
                    "median_ms": median,
                    "max_ms": worst,
                    "note": "nobody left to requeue",
                }
            )
            for q in QUEUES:
                client.delete(queue_key(namespace, q), f"{queue_key(namespace, q)}.msgs")
    finally:
        _clear(client, namespace)
        broker.client.close()
        client.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--db-keys", type=int, default=100_000)
    parser.add_argument("--dead-workers", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--unacked", type=int, default=8)
    args = parser.parse_args()
    rows = run(args)
    print(f"{'scenario':<24} {'median ms':>10} {'max ms':>9}  note")
    for row in rows:
        print(
            f"{row['scenario']:<24} {row['median_ms']:>10.3f} {row['max_ms']:>9.3f}  {row['note']}"
        )


if __name__ == "__main__":
    main()
