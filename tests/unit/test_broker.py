"""The broker factory, on fakeredis (the one place a fake broker is used)."""

from __future__ import annotations

import fakeredis
from dramatiq.middleware import AsyncIO, Retries

from common.broker.factory import build_broker
from common.broker.publish import usage_batch_message, usage_message
from common.broker.stopping import DaemonAsyncIO, GracefulStop
from common.names import ACTOR_RECORD_USAGE, QUEUE_USAGE
from config.settings import Settings


def test_factory_sets_explicit_retries_and_asyncio() -> None:
    settings = Settings(CONTACTO_RETRIES_MAX=7, CONTACTO_RETRIES_MIN_BACKOFF_MS=250)
    broker = build_broker(settings, client=fakeredis.FakeRedis())
    retries = next(m for m in broker.middleware if isinstance(m, Retries))
    assert (retries.max_retries, retries.min_backoff) == (7, 250)
    kinds = [type(m) for m in broker.middleware]
    # The loop thread is a daemon, and a stop signal delivered twice does not abort the stop.
    assert DaemonAsyncIO in kinds and GracefulStop in kinds
    assert sum(isinstance(m, AsyncIO) for m in broker.middleware) == 1


def test_usage_messages_are_the_contract_shape() -> None:
    broker = build_broker(
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
    default = build_broker(Settings(), client=fakeredis.FakeRedis())
    assert default.dead_message_ttl == 30 * 86_400_000
    shorter = build_broker(
        Settings(CONTACTO_DEAD_MESSAGE_TTL_DAYS="2.5"),
        client=fakeredis.FakeRedis(),
    )
    assert shorter.dead_message_ttl == 216_000_000
