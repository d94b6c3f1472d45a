"""What a test asks of its broker, asked of the one it runs on (CONTACTO_TEST_BROKER).

The e2e tier runs on Redis and, with CONTACTO_TEST_BROKER=rabbitmq, on RabbitMQ (a vhost per
test, see the `namespace` fixture). Tests that only need "is the queue drained" or "which
messages wait on this queue" call these and run on both; key and queue layouts stay in
common/names.py and the broker modules.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any

import pika
import redis
from dramatiq.common import dq_name

from common import names
from common.broker import inspect, rabbitmq
from config.settings import Settings
from tests.support.waiting import until


def on_rabbitmq() -> bool:
    return os.environ.get("CONTACTO_TEST_BROKER") == "rabbitmq"


def _settings(namespace: str) -> Settings:
    # The `namespace` fixture points BROKER_URL at the test's vhost on RabbitMQ.
    return Settings(CONTACTO_BROKER_NAMESPACE=namespace)


@dataclass(frozen=True)
class QueueCounts:
    waiting: int  # ready or delayed: what a worker will fetch
    held: int  # fetched by a worker and not yet acknowledged


def queue_counts(namespace: str, queue: str) -> QueueCounts:
    """Messages of `queue` (and its delay queue) not yet done with.

    On RabbitMQ only the ready counts are exact at once (AMQP's queue.declare-ok; rabbitmqctl's
    figures for a quorum queue are refreshed every few seconds), and unacknowledged messages
    cannot be counted over AMQP: `held` is 0, and `waiting` is exact only once no consumer is
    attached (RabbitMQ then has every unacked message back on its queue). `settled_counts`
    waits for that."""
    settings = _settings(namespace)
    if settings.broker_is_rabbitmq:
        assert settings.broker_url is not None
        (stats,) = rabbitmq.queue_stats(settings.broker_url, [queue])
        return QueueCounts(stats.ready + stats.delayed, 0)
    client = redis.Redis.from_url(settings.broker_redis_url)
    try:
        found = inspect.queue_stats(client, namespace, settings.broker_heartbeat_timeout_ms)
    finally:
        client.close()
    stats_ = next((s for s in found if s.queue == queue), None)
    if stats_ is None:
        return QueueCounts(0, 0)
    return QueueCounts(stats_.ready + stats_.delayed, stats_.in_flight)


async def settled_counts(namespace: str, queue: str) -> QueueCounts:
    """queue_counts once every worker of `queue` is gone (call it after stopping them)."""
    settings = _settings(namespace)
    if settings.broker_is_rabbitmq:
        assert settings.broker_url is not None
        url = settings.broker_url
        await until(
            lambda: asyncio.to_thread(_rabbit_consumers, url, queue),
            lambda n: n == 0,
            timeout_s=10,
            what=f"no consumer on {queue}",
        )
    return await asyncio.to_thread(queue_counts, namespace, queue)


def _rabbit_consumers(url: str, queue: str) -> int:
    stats = rabbitmq.queue_stats(url, [queue, dq_name(queue)])
    return sum(s.consumers for s in stats)


async def queue_drained(namespace: str, queue: str) -> bool:
    """Nothing waits on `queue` (on Redis: and nothing is held by a worker either; on RabbitMQ
    that cannot be seen, see queue_counts: wait for the work's effect too)."""
    counts = await asyncio.to_thread(queue_counts, namespace, queue)
    return counts.waiting == 0 and counts.held == 0


def waiting_messages(namespace: str, queue: str) -> list[dict[str, Any]]:
    """The dramatiq messages ready on `queue`, decoded, left where they are."""
    settings = _settings(namespace)
    if settings.broker_is_rabbitmq:
        assert settings.broker_url is not None
        return _rabbit_waiting(settings.broker_url, queue)
    client = redis.Redis.from_url(settings.broker_redis_url)
    try:
        ids = client.lrange(names.queue_key(namespace, queue), 0, -1)
        raws = [client.hget(names.queue_msgs_key(namespace, queue), i) for i in ids]
        return [json.loads(raw) for raw in raws if raw is not None]
    finally:
        client.close()


def _rabbit_waiting(url: str, queue: str) -> list[dict[str, Any]]:
    # Fetched unacknowledged: RabbitMQ puts them back when the connection closes.
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        found: list[dict[str, Any]] = []
        while True:
            method, _props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return found
            found.append(json.loads(body))
    finally:
        connection.close()
