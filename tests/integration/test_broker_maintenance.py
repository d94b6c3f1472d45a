"""dramatiq's maintenance on the relay's clock (common/broker/maintenance.py), on a real Redis:
a message a dead consumer fetched and never acked comes back after the heartbeat timeout."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from common.broker.factory import build_redis_broker
from common.broker.maintenance import maintained_queues, run_maintenance
from common.names import QUEUE_CHARGES, QUEUES, delay_queue, queue_key
from config.settings import Settings

HEARTBEAT_TIMEOUT_MS = 1000


@pytest.fixture
def qsettings(namespace: str) -> Settings:
    # No dice: only run_maintenance may requeue anything here.
    return Settings(
        CONTACTO_BROKER_NAMESPACE=namespace,
        CONTACTO_BROKER_HEARTBEAT_TIMEOUT_MS=HEARTBEAT_TIMEOUT_MS,
        CONTACTO_BROKER_MAINTENANCE_CHANCE=0,
    )


def run_message(run_id: int) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=QUEUE_CHARGES,
        actor_name="run_recharge",
        args=(),
        kwargs={"run_id": run_id},
        options={},
    )


def fetch_one(broker: RedisBroker, queue_name: str) -> Any:
    """A consumer of `queue_name` fetches one message and never acks it (then dies)."""
    consumer = broker.consume(queue_name, prefetch=1, timeout=100)
    for _ in range(20):
        message = next(consumer)
        if message is not None:
            return message
    raise AssertionError(f"nothing to fetch on {queue_name}")


def test_every_queue_and_its_delay_queue_are_maintained() -> None:
    assert maintained_queues() == [n for q in QUEUES for n in (q, delay_queue(q))]


@pytest.mark.parametrize("delayed", [False, True], ids=["ready", "delayed"])
def test_a_dead_consumers_unacked_message_comes_back_after_the_heartbeat_timeout(
    qsettings: Settings, client: redis.Redis, broker: RedisBroker, delayed: bool
) -> None:
    # Given a worker that fetched a message and died without acking it
    queue_name = delay_queue(QUEUE_CHARGES) if delayed else QUEUE_CHARGES
    ready_key = queue_key(qsettings.broker_namespace, queue_name)
    producer = build_redis_broker(qsettings)
    sent = producer.enqueue(run_message(7), delay=60_000 if delayed else None)
    worker = build_redis_broker(qsettings)
    fetched = fetch_one(worker, queue_name)
    assert fetched.message_id == sent.message_id
    assert client.llen(ready_key) == 0
    relay = build_redis_broker(qsettings)  # the relay's own broker, as workers/relay.py builds it

    # While the worker may still be alive, maintenance leaves its message alone
    run_maintenance(relay)
    assert client.llen(ready_key) == 0

    # When its heartbeat is older than the timeout, the relay's maintenance gives it back
    time.sleep(HEARTBEAT_TIMEOUT_MS / 1000 + 0.3)
    assert client.llen(ready_key) == 0  # nothing else ever would (maintenance chance 0)
    run_maintenance(relay)
    assert client.llen(ready_key) == 1

    # Then another worker gets the same message
    again = fetch_one(build_redis_broker(qsettings), queue_name)
    assert again.message_id == sent.message_id
    assert again.kwargs == {"run_id": 7}
    for b in (producer, worker, relay):
        b.client.close()
