"""The balance worker as real processes on the real broker (Redis, or RabbitMQ with
CONTACTO_TEST_BROKER=rabbitmq) and PostgreSQL."""

from __future__ import annotations

import sys
import uuid
from decimal import Decimal
from typing import Any

import pytest

from common.broker.factory import build_broker
from common.broker.publish import usage_batch_message, usage_message
from common.names import QUEUE_CHARGES, QUEUE_USAGE
from config.settings import Settings
from tests.support.brokers import queue_drained, waiting_messages
from tests.support.factories import balance_and_ledger, create_account, event, new_id
from tests.support.procs import Proc, dramatiq_worker, relay, running, worker_env
from tests.support.waiting import until

pytestmark = [pytest.mark.slow]


def broker_for(namespace: str) -> Any:
    return build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))


async def ledger_rows(conn: Any, account: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE account_id = $1 AND kind = 'usage'", account
        )
    )


async def test_5000_debits_on_one_account_from_2_processes_x_8_threads(
    conn: Any, namespace: str
) -> None:
    acct = new_id()
    await create_account(conn, acct)
    broker = broker_for(namespace)
    amount = Decimal("0.013007")
    singles = [event(acct, str(amount)) for _ in range(3000)]
    batched = [event(acct, str(amount)) for _ in range(2000)]
    for ev in singles:
        broker.enqueue(usage_message(ev))
    for i in range(0, len(batched), 100):
        broker.enqueue(usage_batch_message(batched[i : i + 100]))
    env = worker_env(namespace)
    with running(dramatiq_worker("workers.balance", "usage", env, processes=2, threads=8)):
        await until(
            lambda: ledger_rows(conn, acct),
            lambda n: n >= 5000,
            timeout_s=120,
            what="5000 usage ledger rows",
        )
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total == -5000 * amount
    assert await ledger_rows(conn, acct) == 5000


async def test_duplicate_deliveries_racing_across_two_processes_debit_once(
    conn: Any, namespace: str
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="1000")
    broker = broker_for(namespace)
    events = [event(acct, "1.5") for _ in range(300)]
    # Each event is delivered three times, back to back, so copies are in flight together
    # on different threads and processes; plus once more inside a batch.
    for ev in events:
        for _ in range(3):
            broker.enqueue(usage_message(ev))
    broker.enqueue(usage_batch_message(events[:100] + events[:100]))
    with running(
        dramatiq_worker("workers.balance", "usage", worker_env(namespace), processes=2, threads=8)
    ):
        # Every event debited and every copy delivered (on RabbitMQ, copies still in a
        # worker's hands cannot be seen; they are duplicates by then, and checked below).
        await until(lambda: ledger_rows(conn, acct), lambda n: n >= 300, what="300 debits")
        await until(lambda: _queue_drained(namespace), bool, timeout_s=60, what="queue drained")
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total == Decimal(1000) - 300 * Decimal("1.5")
    assert await ledger_rows(conn, acct) == 300


async def _queue_drained(namespace: str) -> bool:
    return await queue_drained(namespace, QUEUE_USAGE)


async def test_bad_input_is_kept_with_reasons_and_the_worker_keeps_running(
    conn: Any, namespace: str
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="50", currency="EUR")
    good = event(acct, "1", currency="EUR")
    bad_kwargs: list[dict[str, Any]] = [
        {},
        {"event_id": "x"},
        dict(good, event_id=f"f-{uuid.uuid4()}", amount=1.5),
        dict(good, event_id=f"i-{uuid.uuid4()}", amount=3),
        dict(good, event_id=f"n-{uuid.uuid4()}", amount="NaN"),
        dict(good, event_id=f"s-{uuid.uuid4()}", amount="1.0000001"),
        dict(good, event_id=f"z-{uuid.uuid4()}", amount="0"),
        dict(good, event_id=f"m-{uuid.uuid4()}", amount="-2"),
        dict(good, event_id=f"u-{uuid.uuid4()}", account_id=new_id("ghost")),
        dict(good, event_id=f"c-{uuid.uuid4()}", currency="USD"),
        dict(good, event_id=f"c2-{uuid.uuid4()}", currency="eur"),
        dict(good, event_id=f"t-{uuid.uuid4()}", occurred_at="not a time"),
        dict(good, event_id=f"tz-{uuid.uuid4()}", occurred_at="2026-01-01T00:00:00"),
        dict(good, event_id="e" * 201),
        dict(good, event_id=f"x-{uuid.uuid4()}", extra_field=True),
        dict(good, event_id=f"k-{uuid.uuid4()}", kind=["voice"]),
        dict(good, event_id="nul\x00id"),
        dict(good, event_id=f"big-{uuid.uuid4()}", amount="1" * 15),
    ]
    broker = broker_for(namespace)
    sent = [broker.enqueue(usage_message(kw)).message_id for kw in bad_kwargs]
    # Positional arguments, and batch-level faults.
    import dramatiq

    cases: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
        ((good,), {}, "record_usage"),
        ((), {"events": "nope"}, "record_usage_batch"),
        ((), {"events": []}, "record_usage_batch"),
        ((), {"events": [good] * 1001}, "record_usage_batch"),
    ]
    for args, kwargs, actor in cases:
        msg: dramatiq.Message[Any] = dramatiq.Message(
            queue_name="usage", actor_name=actor, args=args, kwargs=kwargs, options={}
        )
        sent.append(broker.enqueue(msg).message_id)
    mixed = [dict(good, event_id=f"ok-{uuid.uuid4()}"), dict(good, amount=7.5), good]
    sent.append(broker.enqueue(usage_batch_message(mixed)).message_id)
    with running(
        dramatiq_worker("workers.balance", "usage", worker_env(namespace), processes=1, threads=4)
    ) as (worker,):
        expected = len(sent)  # one rejection per message (the batch: its one bad event)
        rows = await until(
            lambda: conn.fetch(
                "SELECT message_id, reason FROM rejected_usage WHERE message_id = ANY($1)", sent
            ),
            lambda r: len(r) >= expected,
            timeout_s=30,
            what="rejections",
        )
        # The worker is alive and still applies good usage after all that.
        broker.enqueue(usage_message(dict(good, event_id=f"after-{uuid.uuid4()}")))
        await until(lambda: ledger_rows(conn, acct), lambda n: n == 3, what="3 debits")
        assert worker.alive()
    assert len(rows) == expected and all(r["reason"] for r in rows)
    assert {r["message_id"] for r in rows} == set(sent)
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total == 47  # 50 - the two good events of the batch - the last one
    assert "Traceback" not in worker.output()


async def test_killed_between_commit_and_publish_the_recharge_message_still_arrives(
    conn: Any, namespace: str, tmp_path: Any
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="100", threshold="100", recharge="20")
    broker = broker_for(namespace)
    broker.enqueue(usage_message(event(acct, "90")))
    crash_env = worker_env(
        namespace,
        CONTACTO_CRASH_AT="balance.after_commit,relay.after_publish",
        CONTACTO_CRASH_MARKER=str(tmp_path / "crash"),
    )
    # 1. The balance worker commits the debit (and the outbox row) and dies before its ack.
    worker = dramatiq_worker("workers.balance", "usage", crash_env, processes=1, threads=2)
    await until(lambda: ledger_rows(conn, acct), lambda n: n == 1, what="debit committed")
    worker.wait_exit(timeout_s=30)
    worker.stop()
    # 2. The relay publishes and dies before marking the row sent.
    first_relay = Proc([sys.executable, "-m", "workers.relay"], crash_env, "relay")
    assert first_relay.wait_exit(timeout_s=30) != 0
    first_relay.stop()
    runs = await conn.fetch("SELECT id FROM recharge_runs WHERE account_id = $1", acct)
    assert len(runs) == 1
    # The relay publishes every unsent outbox row of the database, other tests' included.
    charges = await _charge_messages(namespace, runs[0]["id"])
    assert len(charges) == 1
    # 3. Restarted: the relay publishes the row again (at-least-once, same message id), and the
    #    redelivered usage message is recognised as a duplicate: still one debit, one run.
    with running(
        relay(crash_env),
        dramatiq_worker("workers.balance", "usage", crash_env, processes=1, threads=2),
    ):
        await until(
            lambda: conn.fetchval(
                "SELECT count(*) FROM outbox o JOIN recharge_runs r ON o.payload::jsonb = "
                "jsonb_build_object('run_id', r.id) WHERE r.account_id = $1 "
                "AND o.sent_at IS NOT NULL",
                acct,
            ),
            lambda n: n == 1,
            what="outbox row sent",
        )
        await until(lambda: _queue_drained(namespace), bool, timeout_s=30, what="redelivery")
    charges = await _charge_messages(namespace, runs[0]["id"])
    assert len(charges) == 2 and len({c["message_id"] for c in charges}) == 1
    assert (
        await conn.fetchval("SELECT count(*) FROM recharge_runs WHERE account_id = $1", acct) == 1
    )
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total == 10


async def _charge_messages(namespace: str, run_id: int) -> list[dict[str, Any]]:
    messages = waiting_messages(namespace, QUEUE_CHARGES)
    return [m for m in messages if m["kwargs"] == {"run_id": run_id}]
