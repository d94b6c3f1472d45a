"""Raw queue entries that are no dramatiq message, written into the queues of running workers:
kept with their reason and their bytes, the workers alive, good messages beside them applied
(common/broker/poison.py).

On Redis the usage queue's garbage becomes rejected usage and the charges queue's is
dead-lettered; on RabbitMQ every queue's is dead-lettered raw into its `.XQ` queue by
SiftingRabbitmqConsumer (common/broker/rabbitmq.py), so each broker has its own tests here."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from typing import Any

import dramatiq
import pika
import pytest
import redis

from common import names
from common.broker.factory import build_broker
from common.broker.publish import usage_message
from common.broker.rabbitmq import dead_letters
from config.settings import Settings
from tests.support.factories import balance_and_ledger, create_account, event, new_id
from tests.support.procs import dramatiq_worker, running, worker_env
from tests.support.waiting import until

pytestmark = pytest.mark.slow

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


@pytest.mark.redis_only
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


@pytest.mark.redis_only
async def test_garbage_and_unfit_messages_on_the_charges_queue_are_dead_lettered(
    namespace: str,
) -> None:
    env = worker_env(namespace)
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
    client = redis.Redis.from_url(Settings().redis_url)
    try:
        with running(dramatiq_worker("workers.charge", "charges", env, threads=2)) as (worker,):
            push_raw(client, namespace, "charges", GARBAGE)
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


# An actor the charge worker does not have; arguments run_recharge cannot bind.
UNFIT: list[tuple[str, dict[str, Any]]] = [
    ("no_such_actor", {}),
    (names.ACTOR_RUN_RECHARGE, {"x": 1}),
]


def charges_message(actor: str, kwargs: dict[str, Any]) -> dramatiq.Message[Any]:
    """A fresh message (each its own message id: a copy keeps the original's)."""
    return dramatiq.Message(
        queue_name="charges", actor_name=actor, args=(), kwargs=kwargs, options={}
    )


def publish_raw(url: str, queue: str, bodies: list[bytes]) -> None:
    """Each body as it is into `queue` (declared by its worker: nothing is declared here), with
    publisher confirms, so a body RabbitMQ could not route fails the test instead of vanishing."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish(
                "", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True
            )
    finally:
        connection.close()


@pytest.mark.rabbitmq_only
async def test_raw_garbage_in_every_queue_is_dead_lettered_raw_on_rabbitmq(
    conn: Any, namespace: str
) -> None:
    """RabbitMQ's counterpart of the two tests above: the same bytes published straight into
    the quorum queues of running workers. A body that is no dramatiq message is dead-lettered
    raw (on the usage queue too: it never reaches record_usage, so it is no rejected usage); an
    unknown actor, or arguments that do not bind, with `dead_reason`. No worker dies, and the
    good usage between the garbage is debited once."""
    acct = new_id()
    await create_account(conn, acct, balance="10")
    env = worker_env(namespace)
    settings = Settings(CONTACTO_BROKER_NAMESPACE=namespace)
    assert settings.broker_url is not None
    url = settings.broker_url
    broker = build_broker(settings)
    unknown, misfit = (charges_message(a, k) for a, k in UNFIT)
    no_message = b'{"actor_name": "record_usage"}'
    huge = b"[" * 1_000_000
    try:
        with running(
            dramatiq_worker("workers.balance", "usage", env, threads=4),
            dramatiq_worker("workers.charge", "charges", env, threads=2),
        ) as (balance_worker, charge_worker):
            broker.enqueue(usage_message(event(acct, "1.00")))
            publish_raw(url, "usage", [GARBAGE, b"", no_message, huge])
            broker.enqueue(usage_message(event(acct, "2.00")))
            publish_raw(url, "charges", [GARBAGE, unknown.encode(), misfit.encode()])
            listed = await until(
                lambda: _async_cli(env),
                lambda d: d["total"] >= 7,
                timeout_s=30,
                what="seven dead letters",
            )
            debited = await until(
                lambda: balance_and_ledger(conn, acct),
                lambda b: b[0] == 7,
                timeout_s=30,
                what="both good events debited",
            )
            assert balance_worker.alive() and charge_worker.alive()
            output = balance_worker.output() + charge_worker.output()
            # As they died: read from the `.XQ` queues, left there.
            letters = dead_letters(url, ["usage", "charges"], limit=10)
    finally:
        broker.close()
    balance, total, entries = debited
    assert balance == total == 7 and entries == 3  # the opening credit, each event once
    assert CRASH_TEXT not in output and "Traceback" not in output
    assert output.count("broker.undecodable") == 5
    assert output.count("broker.message_dead_lettered") == 2
    assert listed["total"] == 7
    reasons = {
        (m["queue"], m["raw"]): m["reason"] for m in listed["messages"] if m["raw"] is not None
    }
    shown_garbage = GARBAGE.decode("utf-8", "replace")
    assert reasons[("usage", shown_garbage)].startswith("not JSON: ")
    assert reasons[("charges", shown_garbage)].startswith("not JSON: ")
    assert reasons[("usage", "")].startswith("not JSON: ")
    assert reasons[("usage", no_message.decode())].startswith("missing fields: args, kwargs")
    assert reasons[("usage", "[" * 2000)].startswith("not JSON: ")  # shown cut short
    by_id = {m["message_id"]: m for m in listed["messages"] if m["message_id"]}
    assert by_id.keys() == {unknown.message_id, misfit.message_id}
    assert by_id[unknown.message_id]["reason"] == "unknown actor 'no_such_actor'"
    assert by_id[misfit.message_id]["reason"].startswith("arguments do not fit run_recharge")
    assert all(m["queue"] == "charges" for m in by_id.values())
    # The bytes kept as they came, the huge one whole.
    raw = sorted((x.queue, x.raw) for x in letters if x.message is None)
    assert raw == sorted(
        [
            ("usage", GARBAGE),
            ("usage", b""),
            ("usage", no_message),
            ("usage", huge),
            ("charges", GARBAGE),
        ]
    )
