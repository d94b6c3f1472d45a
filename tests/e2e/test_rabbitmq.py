"""The pipeline on RabbitMQ (`BROKER_URL=amqp://…`): the same processes, each test in a vhost of
its own (RabbitMQ's namespace), queues declared quorum."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pika
import pytest

from common import names
from common.broker.factory import build_broker
from common.broker.publish import usage_batch_message, usage_message
from common.broker.rabbitmq import QuorumRabbitmqBroker
from config.settings import Settings
from tests.e2e.test_recharge_processes import (
    assert_exactly_once,
    charge_rows,
    cli,
    processes,
    stack_env,
)
from tests.support.factories import balance_and_ledger, create_account, event, new_id
from tests.support.procs import dramatiq_worker, worker_env
from tests.support.waiting import until

pytestmark = pytest.mark.slow

AMQP = "amqp://guest:guest@127.0.0.1:5672"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def vhost() -> Iterator[str]:
    """A vhost of the test's own: its queues start empty, and go with it."""
    if shutil.which("rabbitmqctl") is None:
        # In CI it must run (.ci/run starts it); elsewhere, a machine without RabbitMQ skips.
        why = "rabbitmqctl not found: RabbitMQ must run on this machine (see .ci/run)"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    name = f"contacto-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)


def rabbit_env(namespace: str, sim_prefix: str, vhost: str) -> dict[str, str]:
    return stack_env(namespace, sim_prefix, BROKER_URL=f"{AMQP}/{vhost}")


def queue_types(vhost: str) -> dict[str, str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type", "--formatter", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {q["name"]: q["type"] for q in json.loads(out)}


async def test_the_faq_example_on_rabbitmq_and_duplicates_debited_once(
    conn: Any, namespace: str, sim_prefix: str, settings: Settings, vhost: str
) -> None:
    env = rabbit_env(namespace, sim_prefix, vhost)
    faq, busy = new_id("faq"), new_id("busy")
    await create_account(
        conn, faq, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    await create_account(conn, busy, balance="1000")
    broker = build_broker(Settings(BROKER_URL=f"{AMQP}/{vhost}"))
    spend = [event(busy, "1") for _ in range(40)]
    with processes(env, "relay", "balance", "charge", "retry"):
        broker.enqueue(usage_message(event(faq, "90")))
        await until(
            lambda: balance_and_ledger(conn, faq), lambda b: b[0] == 110, what="FAQ: five charges"
        )
        # Every event twice, singly and in a batch: debited once.
        for ev in spend:
            broker.enqueue(usage_message(ev))
        broker.enqueue(usage_batch_message(spend))
        await until(lambda: balance_and_ledger(conn, busy), lambda b: b[0] == 960, what="40 debits")
    assert [c["status"] for c in await charge_rows(conn, faq)] == ["succeeded"] * 5
    await assert_exactly_once(conn, settings, sim_prefix, faq)
    balance, total, _ = await balance_and_ledger(conn, busy)
    assert balance == total == 960
    types = queue_types(vhost)
    assert {types[q] for q in ("usage", "usage.DQ", "usage.XQ", "charges")} == {"quorum"}


async def test_a_charge_worker_killed_after_the_gateway_call_is_redelivered_at_once(
    conn: Any, namespace: str, sim_prefix: str, settings: Settings, vhost: str, tmp_path: Any
) -> None:
    """No heartbeat to wait for: RabbitMQ returns the dead consumer's message as its
    connection drops, and the same idempotency key is replayed."""
    acct = new_id()
    await create_account(
        conn, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    crash = {
        "CONTACTO_CRASH_AT": "charge.after_gateway",
        "CONTACTO_CRASH_MARKER": str(tmp_path / "crash"),
    }
    env = rabbit_env(namespace, sim_prefix, vhost)
    broker = build_broker(Settings(BROKER_URL=f"{AMQP}/{vhost}"))
    with processes(env, "relay", "balance"):
        broker.enqueue(usage_message(event(acct, "90")))
        charge = dramatiq_worker("workers.charge", "charges", env | crash, threads=4)
        assert charge.wait_exit(timeout_s=60) != 0  # killed itself at the crash point
        charge.stop()
        with processes(env, "charge"):
            await until(
                lambda: balance_and_ledger(conn, acct),
                lambda b: b[0] == 110,
                timeout_s=60,
                what="run completed after the crash",
            )
    rows = await charge_rows(conn, acct)
    assert [c["status"] for c in rows] == ["succeeded"] * 5
    assert rows[0]["gateway_calls"] == 2  # the same key, replayed once
    await assert_exactly_once(conn, settings, sim_prefix, acct)


async def test_undecodable_bytes_are_dead_lettered_raw_and_the_cli_reads_and_requeues(
    conn: Any, namespace: str, sim_prefix: str, vhost: str
) -> None:
    env = rabbit_env(namespace, sim_prefix, vhost)
    acct = new_id()
    await create_account(conn, acct, balance="50")
    broker = build_broker(Settings(BROKER_URL=f"{AMQP}/{vhost}"))

    async def dead_letters() -> Any:
        return _json(cli(env, "dlq", "list", "--json"))

    with processes(env, "balance") as procs:  # the worker declares the queues
        connection = pika.BlockingConnection(pika.URLParameters(f"{AMQP}/{vhost}"))
        channel = connection.channel()
        # Not JSON, and JSON that is no dramatiq message (as common/broker/poison.py sifts).
        for body in (b"\xff not json {", b'{"actor_name": "record_usage"}'):
            channel.basic_publish("", "usage", body, pika.BasicProperties(delivery_mode=2))
        connection.close()
        broker.enqueue(usage_message(event(acct, "1")))
        await until(lambda: balance_and_ledger(conn, acct), lambda b: b[0] == 49, what="debit")
        listed = await until(
            dead_letters,
            lambda out: out["total"] == 2,
            what="the raw bytes dead-lettered",
        )
        assert procs["balance"].alive()
        output = procs["balance"].output()
    # Kept as they came, with the reason (the same as on Redis); one log line each, no traceback.
    by_raw = {m["raw"]: m for m in listed["messages"]}
    assert by_raw["\ufffd not json {"]["reason"].startswith("not JSON: ")
    missing = by_raw['{"actor_name": "record_usage"}']["reason"]
    assert missing.startswith("missing fields: args, kwargs, message_id")
    assert "Traceback" not in output and output.count("broker.undecodable") == 2
    queues = _json(cli(env, "queues", "--json"))
    assert queues["broker"] == "rabbitmq"
    assert {q["queue"]: q["dead"] for q in queues["queues"]}["usage"] == 2
    # Undecodable bytes cannot go back to work; purge removes them.
    requeued = _json(cli(env, "dlq", "requeue", "--all", "--json"))
    assert requeued["requeued"] == [] and len(requeued["skipped"]) == 2
    purged = _json(cli(env, "dlq", "purge", "--yes", "--json"))
    assert purged["purged"]["usage"] == 2


async def test_messages_the_worker_cannot_run_are_dead_lettered_at_once_with_their_reason(
    namespace: str, sim_prefix: str, vhost: str
) -> None:
    """As on Redis (tests/e2e/test_poison.py): an unknown actor, arguments that do not bind."""
    env = rabbit_env(namespace, sim_prefix, vhost)
    broker = build_broker(Settings(BROKER_URL=f"{AMQP}/{vhost}"))
    msg: dramatiq.Message[Any] = dramatiq.Message(
        queue_name="charges", actor_name="no_such_actor", args=(), kwargs={}, options={}
    )
    with processes(env, "charge") as procs:
        unknown = broker.enqueue(msg)
        misfit = broker.enqueue(msg.copy(actor_name=names.ACTOR_RUN_RECHARGE, kwargs={"x": 1}))
        listed = await until(
            lambda: asyncio.to_thread(lambda: _json(cli(env, "dlq", "list", "--json"))),
            lambda out: out["total"] >= 2,
            timeout_s=30,
            what="two dead letters",
        )
        assert procs["charge"].alive()
        output = procs["charge"].output()
    reasons = {m["message_id"]: m["reason"] for m in listed["messages"]}
    assert reasons == {
        unknown.message_id: "unknown actor 'no_such_actor'",
        misfit.message_id: reasons[misfit.message_id],
    }
    assert reasons[misfit.message_id].startswith("arguments do not fit run_recharge")
    # Not run, not retried: one warning each.
    assert "Traceback" not in output and output.count("broker.message_dead_lettered") == 2


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_tier_runs_on_the_broker_the_environment_names(namespace: str) -> None:
    """`CONTACTO_TEST_BROKER=rabbitmq` (CI's second pass over this tier) must really put every
    test's processes and brokers on RabbitMQ, not quietly on Redis."""
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
    on_rabbitmq = os.environ.get("CONTACTO_TEST_BROKER") == "rabbitmq"
    assert isinstance(broker, QuorumRabbitmqBroker) is on_rabbitmq
    assert worker_env(namespace).get("BROKER_URL", "").startswith("amqp://") is on_rabbitmq
