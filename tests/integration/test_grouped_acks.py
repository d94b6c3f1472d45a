"""Grouped acks (common/broker/grouped_acks.py) against a real Redis and dramatiq's own key
layout."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import ConnectionClosed

from common.broker.factory import build_redis_broker
from common.broker.grouped_acks import GroupedAckConsumer, GroupedAckRedisBroker
from common.broker.publish import usage_message
from common.names import QUEUE_USAGE
from config.settings import Settings


def _event(n: int) -> dict[str, str]:
    return {
        "event_id": f"ack-{n}",
        "account_id": "a",
        "amount": "1",
        "currency": "USD",
        "occurred_at": "2026-01-01T00:00:00Z",
    }


def _keys(broker: RedisBroker, namespace: str) -> dict[str, Any]:
    """Everything dramatiq keeps for the queue, minus the heartbeat times."""
    client = broker.client
    acks = f"{namespace}:__acks__.{broker.broker_id}.{QUEUE_USAGE}"
    return {
        "queue": client.llen(f"{namespace}:{QUEUE_USAGE}"),
        "messages": sorted(client.hkeys(f"{namespace}:{QUEUE_USAGE}.msgs")),
        "unacked": sorted(client.smembers(acks)),
        "heartbeat": client.zscore(f"{namespace}:__heartbeats__", broker.broker_id) is not None,
    }


@pytest.fixture
def broker(test_settings: Settings) -> Iterator[RedisBroker]:
    broker = build_redis_broker(test_settings)
    yield broker
    broker.close()


def _fetch(broker: RedisBroker, count: int) -> tuple[Any, list[Any]]:
    for n in range(count):
        broker.enqueue(usage_message(_event(n)))
    consumer = broker.consume(QUEUE_USAGE, prefetch=count, timeout=100)
    messages = [next(consumer) for _ in range(count)]
    assert all(m is not None for m in messages)
    return consumer, messages


def test_the_factory_builds_the_grouped_ack_broker(broker: RedisBroker) -> None:
    assert isinstance(broker, GroupedAckRedisBroker)
    assert isinstance(broker.consume(QUEUE_USAGE, timeout=100), GroupedAckConsumer)


@pytest.mark.parametrize("acked", [0, 1, 3, 5])
def test_same_redis_state_as_dramatiq_own_ack(test_settings: Settings, acked: int) -> None:
    """The Lua script mirrors dispatch.lua's `ack`: same keys left, whatever is acked."""
    states = []
    for cls, suffix in ((RedisBroker, "stock"), (GroupedAckRedisBroker, "grouped")):
        namespace = f"{test_settings.broker_namespace}-{suffix}"
        settings = Settings(CONTACTO_BROKER_NAMESPACE=namespace)
        broker = build_redis_broker(settings, broker_class=cls)
        consumer, messages = _fetch(broker, 5)
        for message in messages[:acked]:
            consumer.ack(message)
        consumer.close()
        state = _keys(broker, namespace)
        # message ids are random per run: compare counts, and which ones by position
        ids = [m.options["redis_message_id"] for m in messages]
        state["messages"] = sorted(ids.index(m.decode()) for m in state["messages"])
        state["unacked"] = sorted(ids.index(m.decode()) for m in state["unacked"])
        states.append(sorted(state.items()))
        broker.close()
    assert states[0] == states[1]
    assert dict(states[1])["messages"] == list(range(acked, 5))


def test_acks_from_many_threads_are_grouped_and_none_is_lost(
    broker: GroupedAckRedisBroker, test_settings: Settings
) -> None:
    consumer, messages = _fetch(broker, 400)
    calls: list[int] = []
    send = broker.ack_many

    def counting(queue_name: str, redis_message_ids: list[str]) -> int:
        calls.append(len(redis_message_ids))
        return send(queue_name, redis_message_ids)

    broker.ack_many = counting  # type: ignore[method-assign]
    start = threading.Barrier(16)

    def ack_share(share: list[Any]) -> None:
        start.wait()
        for message in share:
            consumer.ack(message)

    threads = [threading.Thread(target=ack_share, args=(messages[n::16],)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    consumer.close()
    state = _keys(broker, test_settings.broker_namespace)
    assert state["messages"] == [] and state["unacked"] == []
    assert sum(calls) == 400
    assert consumer.outstanding_message_count == 0
    assert len(calls) < 400  # grouped: fewer Redis calls than messages


def test_an_ack_while_another_is_in_flight_returns_at_once(
    broker: GroupedAckRedisBroker, test_settings: Settings
) -> None:
    consumer, (first, second) = _fetch(broker, 2)
    entered, release = threading.Event(), threading.Event()
    send = broker.ack_many

    def slow(queue_name: str, redis_message_ids: list[str]) -> int:
        entered.set()
        assert release.wait(5)
        return send(queue_name, redis_message_ids)

    broker.ack_many = slow  # type: ignore[method-assign]
    flusher = threading.Thread(target=consumer.ack, args=(first,))
    flusher.start()
    assert entered.wait(5)
    consumer.ack(second)  # buffered: the flusher sends it next
    assert len(_keys(broker, test_settings.broker_namespace)["messages"]) == 2
    release.set()
    flusher.join(5)
    assert _keys(broker, test_settings.broker_namespace)["messages"] == []


def test_a_failed_send_keeps_the_acks_for_the_retry(
    broker: GroupedAckRedisBroker, test_settings: Settings
) -> None:
    consumer, (first, second) = _fetch(broker, 2)
    send = broker.ack_many
    failures = [redis.ConnectionError("redis went away")]

    def flaky(queue_name: str, redis_message_ids: list[str]) -> int:
        if failures:
            raise failures.pop()
        return send(queue_name, redis_message_ids)

    broker.ack_many = flaky  # type: ignore[method-assign]
    with pytest.raises(ConnectionClosed):  # dramatiq retries post_process_message on this
        consumer.ack(first)
    assert len(_keys(broker, test_settings.broker_namespace)["messages"]) == 2
    consumer.ack(second)  # the next ack sends both
    assert _keys(broker, test_settings.broker_namespace)["messages"] == []


def test_close_sends_what_is_still_buffered(
    broker: GroupedAckRedisBroker, test_settings: Settings
) -> None:
    consumer, (first,) = _fetch(broker, 1)
    consumer._buffered.append(first.options["redis_message_id"])  # as if a flush had failed
    consumer.close()
    assert _keys(broker, test_settings.broker_namespace)["messages"] == []
