"""The broker factory, on fakeredis (the one place a fake broker is used)."""

from __future__ import annotations

from typing import Any

import dramatiq
import fakeredis
from dramatiq.middleware import AsyncIO, Retries

from common import names
from common.broker.factory import build_redis_broker
from common.broker.publish import usage_batch_message, usage_message
from common.broker.stopping import DaemonAsyncIO, GracefulStop
from common.names import (
    ACTOR_RECORD_USAGE,
    ACTOR_RUN_RECHARGE,
    QUEUE_CHARGES,
    QUEUE_RETRIES,
    QUEUE_USAGE,
)
from common.recharge.reconcile import broker_view, work_key
from config.settings import Settings


def test_factory_sets_explicit_retries_and_asyncio() -> None:
    settings = Settings(CONTACTO_RETRIES_MAX=7, CONTACTO_RETRIES_MIN_BACKOFF_MS=250)
    broker = build_redis_broker(settings, client=fakeredis.FakeRedis())
    retries = next(m for m in broker.middleware if isinstance(m, Retries))
    assert (retries.max_retries, retries.min_backoff) == (7, 250)
    kinds = [type(m) for m in broker.middleware]
    # The loop thread is a daemon, and a stop signal delivered twice does not abort the stop.
    assert DaemonAsyncIO in kinds and GracefulStop in kinds
    assert sum(isinstance(m, AsyncIO) for m in broker.middleware) == 1


def test_usage_messages_are_the_contract_shape() -> None:
    broker = build_redis_broker(
        Settings(CONTACTO_BROKER_NAMESPACE="unit"),
        client=fakeredis.FakeRedis(),
    )
    event = {
        "event_id": "e",
        "account_id": "a",
        "amount": "1",
        "currency": "USD",
        "occurred_at": "2026-01-01T00:00:00Z",
    }
    broker.enqueue(usage_message(event))
    broker.enqueue(usage_batch_message([event]))
    consumer = broker.consume(QUEUE_USAGE, prefetch=2, timeout=100)
    first, second = next(consumer), next(consumer)
    assert first is not None and second is not None
    assert first.actor_name == ACTOR_RECORD_USAGE and first.kwargs == event and first.args == ()
    assert second.kwargs == {"events": [event]}
    assert broker.client.llen("unit:usage") == 0  # both fetched


def test_dead_letters_are_kept_thirty_days_unless_configured() -> None:
    """dramatiq's own default (7 days) would delete a dead-lettered debit before anyone looked."""
    default = build_redis_broker(Settings(), client=fakeredis.FakeRedis())
    assert default.dead_message_ttl == 30 * 86_400_000
    shorter = build_redis_broker(
        Settings(CONTACTO_DEAD_MESSAGE_TTL_DAYS="2.5"),
        client=fakeredis.FakeRedis(),
    )
    assert shorter.dead_message_ttl == 216_000_000


def test_the_factory_defaults_bound_recovery_and_leave_maintenance_to_the_relay() -> None:
    # Not dramatiq's 60 s and 1,000 per million (docs/performance.md, "Broker maintenance").
    broker = build_redis_broker(Settings(), client=fakeredis.FakeRedis())
    assert (broker.heartbeat_timeout, broker.maintenance_chance) == (15_000, 100)
    assert Settings().broker_maintenance_interval_s == 5


def test_the_reconciler_sees_what_the_broker_holds_and_what_is_dead() -> None:
    # Given messages ready, delayed, in flight and dead, and one entry nobody can decode
    client = fakeredis.FakeRedis()
    broker = build_redis_broker(Settings(CONTACTO_BROKER_NAMESPACE="unit"), client=client)

    def run(run_id: int) -> dramatiq.Message[Any]:
        return dramatiq.Message(
            queue_name=QUEUE_CHARGES,
            actor_name=ACTOR_RUN_RECHARGE,
            args=(),
            kwargs={"run_id": run_id},
            options={},
        )

    broker.enqueue(run(1))
    broker.enqueue(run(2), delay=60_000)
    broker.enqueue(run(3))
    broker.enqueue(run(4))
    consumer = broker.consume(QUEUE_CHARGES, prefetch=1, timeout=100)
    first = next(consumer)  # run 1, now in flight
    assert first is not None
    client.hset(names.queue_msgs_key("unit", QUEUE_RETRIES), "junk", b"\xff not json")

    # When the reconciler reads the broker
    view = broker_view(client, "unit")

    # Then every live copy counts as held, whatever its state; undecodable entries are ignored
    assert view.held == {work_key(ACTOR_RUN_RECHARGE, {"run_id": i}) for i in (1, 2, 3, 4)}
    assert view.dead == frozenset()

    # And a dead-lettered one counts as dead, not held
    nacker = broker.consume(QUEUE_CHARGES, prefetch=1, timeout=100)
    [fetched] = [m for m in (next(nacker) for _ in range(3)) if m is not None]
    nacker.nack(fetched)
    view = broker_view(client, "unit")
    dead = work_key(ACTOR_RUN_RECHARGE, {"run_id": fetched.kwargs["run_id"]})
    assert dead in view.dead and dead not in view.held
