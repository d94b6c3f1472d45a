"""enqueue_many (common/broker/enqueue_many.py) against a real Redis and dramatiq's own layout:
a consumer gets from one pipelined call what it gets from `enqueue` called once per message."""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis, dq_name
from dramatiq.middleware import Middleware

from common.broker.enqueue_many import enqueue_many
from common.broker.factory import build_redis_broker
from common.broker.publish import usage_message
from common.names import QUEUE_USAGE
from config.settings import Settings


@pytest.fixture
def qsettings(namespace: str) -> Settings:
    return Settings(CONTACTO_BROKER_NAMESPACE=namespace, CONTACTO_BROKER_MAINTENANCE_CHANCE=0)


class Hooks(Middleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int | None]] = []

    def before_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        self.seen.append(("before", message.message_id, delay))

    def after_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        self.seen.append(("after", message.message_id, delay))


def _messages(n: int, tag: str) -> list[dramatiq.Message[Any]]:
    return [
        usage_message({"event_id": f"{tag}-{i}", "account_id": "a", "amount": "1"})
        for i in range(n)
    ]


def _layout(broker: RedisBroker, namespace: str) -> dict[str, Any]:
    client = broker.client
    delayed = dq_name(QUEUE_USAGE)
    return {
        "queued": client.llen(f"{namespace}:{QUEUE_USAGE}"),
        "stored": client.hlen(f"{namespace}:{QUEUE_USAGE}.msgs"),
        "delayed_queued": client.llen(f"{namespace}:{delayed}"),
        "delayed_stored": client.hlen(f"{namespace}:{delayed}.msgs"),
    }


def _drain(broker: RedisBroker, queue: str, n: int) -> list[dramatiq.Message[Any]]:
    consumer = broker.consume(queue, prefetch=n, timeout=100)
    got = []
    for _ in range(n * 3):
        proxy = next(consumer)
        if proxy is not None:
            got.append(proxy._message)
            consumer.ack(proxy)
        if len(got) == n:
            break
    consumer.close()
    return got


@pytest.mark.parametrize("n", [1, 7, 200])
def test_the_consumer_gets_what_enqueue_would_have_given(
    qsettings: Settings, namespace: str, client: redis.Redis, n: int
) -> None:
    one_by_one = build_redis_broker(Settings(CONTACTO_BROKER_NAMESPACE=f"{namespace}-single"))
    batched = build_redis_broker(qsettings)
    try:
        delays = [None if i % 3 else 60_000 for i in range(n)]
        for message, delay in zip(_messages(n, "single"), delays, strict=True):
            one_by_one.enqueue(message, delay=delay)
        sent = _messages(n, "batch")
        enqueue_many(batched, list(zip(sent, delays, strict=True)))

        assert _layout(batched, namespace) == _layout(one_by_one, f"{namespace}-single")
        immediate = [m for m, d in zip(sent, delays, strict=True) if d is None]
        got = _drain(batched, QUEUE_USAGE, len(immediate))
        assert [(m.message_id, m.kwargs) for m in got] == [
            (m.message_id, m.kwargs) for m in immediate
        ]
        assert len({m.options["redis_message_id"] for m in got}) == len(got)
    finally:
        one_by_one.close()
        for key in client.scan_iter(match=f"{namespace}-single:*"):
            client.delete(key)
        batched.close()


def test_a_delayed_message_waits_in_the_delay_queue_with_its_eta(
    qsettings: Settings, namespace: str, client: redis.Redis
) -> None:
    broker = build_redis_broker(qsettings)
    try:
        (message,) = _messages(1, "later")
        before = current_millis()
        enqueue_many(broker, [(message, 30_000)])
        (stored,) = _drain(broker, dq_name(QUEUE_USAGE), 1)
        assert stored.message_id == message.message_id
        assert stored.queue_name == dq_name(QUEUE_USAGE)
        assert before + 30_000 <= stored.options["eta"] <= current_millis() + 30_000
    finally:
        broker.close()


def test_middleware_hooks_run_for_each_message_in_order(
    qsettings: Settings, client: redis.Redis
) -> None:
    hooks = Hooks()
    broker = build_redis_broker(qsettings, extra_middleware=[hooks])
    try:
        sent = _messages(3, "hooks")
        enqueue_many(broker, [(sent[0], None), (sent[1], 5_000), (sent[2], None)])
        ids = [m.message_id for m in sent]
        assert hooks.seen == [
            ("before", ids[0], None),
            ("before", ids[1], 5_000),
            ("before", ids[2], None),
            ("after", ids[0], None),
            ("after", ids[1], 5_000),
            ("after", ids[2], None),
        ]
    finally:
        broker.close()


def test_nothing_to_send_sends_nothing(
    qsettings: Settings, namespace: str, client: redis.Redis
) -> None:
    broker = build_redis_broker(qsettings)
    try:
        enqueue_many(broker, [])
        assert set(_layout(broker, namespace).values()) == {0}
    finally:
        broker.close()


def test_another_broker_enqueues_one_by_one() -> None:
    broker = StubBroker()
    broker.declare_queue(QUEUE_USAGE)
    sent = _messages(3, "stub")
    enqueue_many(broker, [(sent[0], None), (sent[1], None), (sent[2], 1_000)])
    assert [dramatiq.Message.decode(m).message_id for m in broker.queues[QUEUE_USAGE].queue] == [
        sent[0].message_id,
        sent[1].message_id,
    ]
    assert [
        dramatiq.Message.decode(m).message_id for m in broker.queues[dq_name(QUEUE_USAGE)].queue
    ] == [sent[2].message_id]
