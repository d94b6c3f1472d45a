"""Raw queue entries that are no dramatiq message, written into the queues of running workers:
kept with their reason and their bytes, the workers alive, good messages beside them applied
(common/broker/poison.py)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
import redis

from common import names
from common.broker.factory import build_broker
from common.broker.publish import usage_message
from config.settings import Settings
from tests.support.factories import balance_and_ledger, create_account, event, new_id
from tests.support.procs import dramatiq_worker, running, worker_env
from tests.support.waiting import until

pytestmark = [pytest.mark.slow, pytest.mark.redis_only]

GARBAGE = b"\xff\xfe{not json: a hostile producer's bytes"
CRASH_TEXT = "Consumer encountered an unexpected error"


def cli(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "common.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def push_raw(client: redis.Redis, namespace: str, queue: str, data: bytes | None) -> str:
    """LPUSH an id onto the queue's list, with `data` under it in the message hash (or none)."""
    redis_id = f"raw-{uuid.uuid4().hex}"
    if data is not None:
        client.hset(names.queue_msgs_key(namespace, queue), redis_id, data)
    client.lpush(names.queue_key(namespace, queue), redis_id)
    return redis_id


def redis_leftovers(client: redis.Redis, namespace: str, queue: str) -> int:
    held = sum(int(client.scard(k)) for k in client.scan_iter(f"{namespace}:__acks__.*"))
    return int(client.hlen(names.queue_msgs_key(namespace, queue))) + held


async def test_raw_garbage_in_the_usage_queue_is_kept_as_rejected_usage(
    conn: Any, namespace: str
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10")
    env = worker_env(namespace)
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
    client = redis.Redis.from_url(Settings().redis_url)
    try:
        with running(dramatiq_worker("workers.balance", "usage", env, threads=4)) as (worker,):
            broker.enqueue(usage_message(event(acct, "1.00")))
            garbage_id = push_raw(client, namespace, "usage", GARBAGE)
            lonely_id = push_raw(client, namespace, "usage", None)
            huge_id = push_raw(client, namespace, "usage", b"[" * 1_000_000)
            broker.enqueue(usage_message(event(acct, "2.00")))
            rows = await until(
                lambda: conn.fetch(
                    "SELECT reason, payload FROM rejected_usage WHERE actor_name = $1 "
                    "AND payload::jsonb ->> 'queue' = 'usage' AND message_id IS NOT NULL",
                    names.ACTOR_UNDECODABLE,
                ),
                lambda r: len(r) >= 3,
                timeout_s=30,
                what="three undecodable entries kept",
            )
            balance = await until(
                lambda: balance_and_ledger(conn, acct),
                lambda b: b[0] == 7,
                timeout_s=30,
                what="both good events debited",
            )
            assert balance[0] == balance[1]
            assert worker.alive()
            await until(
                lambda: _async(redis_leftovers(client, namespace, "usage")),
                lambda n: n == 0,
                timeout_s=15,
                what="nothing left in Redis",
            )
        output = worker.output()
    finally:
        client.close()
        broker.close()
    assert CRASH_TEXT not in output and "Traceback" not in output
    kept = {base64.b64decode(json.loads(r["payload"])["raw_base64"]): r for r in rows}
    assert set(kept) >= {GARBAGE, lonely_id.encode()}
    assert kept[GARBAGE]["reason"].startswith("undecodable message: not JSON")
    assert "without message data" in kept[lonely_id.encode()]["reason"]
    huge = [json.loads(r["payload"]) for r in rows if json.loads(r["payload"])["truncated"]]
    assert huge and huge[0]["raw_size"] == 1_000_000
    assert garbage_id and huge_id
    # The CLI lists them as any other rejection.
    listed = cli(env, "usage", "rejected", "--json")
    assert sum(1 for r in listed if r["actor_name"] == names.ACTOR_UNDECODABLE) >= 3


async def _async(value: int) -> int:
    return value


async def test_garbage_and_unfit_messages_on_the_charges_queue_are_dead_lettered(
    namespace: str,
) -> None:
    env = worker_env(namespace)
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
    client = redis.Redis.from_url(Settings().redis_url)
    try:
        with running(dramatiq_worker("workers.charge", "charges", env, threads=2)) as (worker,):
            push_raw(client, namespace, "charges", GARBAGE)
            import dramatiq

            msg: dramatiq.Message[Any] = dramatiq.Message(
                queue_name="charges", actor_name="no_such_actor", args=(), kwargs={}, options={}
            )
            unknown = broker.enqueue(msg)
            misfit = broker.enqueue(msg.copy(actor_name=names.ACTOR_RUN_RECHARGE, kwargs={"x": 1}))
            listed = await until(
                lambda: _async_cli(env),
                lambda d: d["total"] >= 3,
                timeout_s=30,
                what="three dead letters",
            )
            assert worker.alive()
        output = worker.output()
    finally:
        client.close()
        broker.close()
    assert CRASH_TEXT not in output
    reasons = {m["actor"]: m["dead_reason"] for m in listed["messages"]}
    assert reasons[names.ACTOR_UNDECODABLE].startswith("not JSON")
    assert reasons["no_such_actor"] == "unknown actor 'no_such_actor'"
    assert reasons[names.ACTOR_RUN_RECHARGE].startswith("arguments do not fit run_recharge")
    ids = {m["message_id"] for m in listed["messages"]}
    assert {unknown.message_id, misfit.message_id} <= ids


async def _async_cli(env: dict[str, str]) -> Any:
    return cli(env, "dlq", "list", "--json")
