"""Enqueue many messages at once: on Redis, one pipelined round trip instead of one per message.

The relay publishes what a burst of transactions wrote to the outbox (forty accounts crossing
their threshold together write forty `run_recharge` rows). One by one, each message was an
EVALSHA round trip and most of the relay's time for the burst, and every run waited for the
ones before it (docs/performance.md, "The crossing, third pass").

Each message goes through what `RedisBroker.enqueue` does (dramatiq/brokers/redis.py, 2.x): a
Redis id of its own, a delayed message to the queue's delay queue with its eta, the
middleware's enqueue hooks, and the `enqueue` command of dramatiq's dispatch script, here
queued on a pipeline. `tests/integration/broker/test_enqueue_many.py` checks that a consumer
gets the same messages as from `enqueue`, delays included. Other brokers (RabbitMQ, where
each publish waits for its confirm) enqueue one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name

Delayed = tuple[dramatiq.Message[Any], int | None]  # (message, delay in ms or None)


def enqueue_many(broker: dramatiq.Broker, items: Sequence[Delayed]) -> None:
    """Enqueue every (message, delay_ms); raises like `enqueue` (then some may have been sent:
    publishing is at-least-once)."""
    if not isinstance(broker, RedisBroker):
        for message, delay_ms in items:
            broker.enqueue(message, delay=delay_ms)
        return
    pipe = broker.client.pipeline(transaction=False)
    dispatch = broker.scripts["dispatch"]
    sent: list[Delayed] = []
    for message, delay_ms in items:
        queue_name = message.queue_name
        message = message.copy(options={"redis_message_id": str(uuid4())})
        if delay_ms is not None:
            queue_name = dq_name(queue_name)
            message = message.copy(
                queue_name=queue_name, options={"eta": current_millis() + delay_ms}
            )
        broker.emit_before("enqueue", message, delay_ms)
        dispatch(
            keys=[broker.namespace],
            args=[
                "enqueue",
                current_millis(),
                queue_name,
                broker.broker_id,
                broker.heartbeat_timeout,
                broker.dead_message_ttl,
                broker._should_do_maintenance("enqueue"),
                broker._max_unpack_size(),  # type: ignore[no-untyped-call]
                message.options["redis_message_id"],
                message.encode(),
            ],
            client=pipe,
        )
        sent.append((message, delay_ms))
    if sent:
        pipe.execute()
    for message, delay_ms in sent:
        broker.emit_after("enqueue", message, delay_ms)
