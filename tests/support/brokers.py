"""What a test asks of its broker, asked of the one it runs on (CONTACTO_TEST_BROKER).

The e2e tier runs on Redis and, with CONTACTO_TEST_BROKER=rabbitmq, on RabbitMQ (a vhost per
test, see the `namespace` fixture). Tests that only need "is the queue drained" or "which
messages wait on this queue" call these and run on both; key and queue layouts stay in
common/names.py and the broker modules.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pika
import redis
from dramatiq.common import dq_name

from common import names
from common.broker import inspect
from config.settings import Settings


def on_rabbitmq() -> bool:
    return os.environ.get("CONTACTO_TEST_BROKER") == "rabbitmq"


def _settings(namespace: str) -> Settings:
    # The `namespace` fixture points BROKER_URL at the test's vhost on RabbitMQ.
    return Settings(CONTACTO_BROKER_NAMESPACE=namespace)


def queue_depth(namespace: str, queue: str) -> int:
    """Messages of `queue` not yet done with: ready, delayed, or fetched and not yet acked."""
    settings = _settings(namespace)
    if settings.broker_is_rabbitmq:
        return _rabbit_depth(namespace, queue)
    client = redis.Redis.from_url(settings.broker_redis_url)
    try:
        stats = inspect.queue_stats(client, namespace, settings.broker_heartbeat_timeout_ms)
    finally:
        client.close()
    found = next((s for s in stats if s.queue == queue), None)
    return 0 if found is None else found.ready + found.delayed + found.in_flight


async def queue_drained(namespace: str, queue: str) -> bool:
    return queue_depth(namespace, queue) == 0


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


def _rabbit_depth(vhost: str, queue: str) -> int:
    # AMQP tells only the ready count; rabbitmqctl's `messages` adds the unacknowledged ones
    # (in a worker's prefetch, or delayed messages it holds until due on the .DQ queue).
    columns = ["name", "messages", "--formatter", "json"]
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, *columns],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    counts = {q["name"]: int(q["messages"]) for q in json.loads(out or "[]")}
    return counts.get(queue, 0) + counts.get(dq_name(queue), 0)
