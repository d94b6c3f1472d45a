"""No-op actors with the same middleware and queue as the balance worker.

The reference is dramatiq as it comes: a stock `RedisBroker` (one Redis call per ack). With
CONTACTO_BENCH_NOOP_BROKER=grouped it runs on our broker instead (grouped acks,
common/broker/grouped_acks.py), which shows what that change saves on its own.

Run by bench.pipeline as `python -m dramatiq bench._noop_worker --queues usage` (cwd = the
repository root). The messages it consumes carry the very same payload as `record_usage`
messages, only the actor name differs, so decoding costs the same: what remains is dramatiq's
own cost per message (fetch, decode, middleware, thread hand-off, ack).
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from common.broker.factory import setup_broker
from common.broker.grouped_acks import GroupedAckRedisBroker
from common.logging import configure_logging
from common.names import QUEUE_USAGE
from config.settings import get_settings

NOOP_ASYNC = "bench_noop_async"
NOOP_SYNC = "bench_noop_sync"

settings = get_settings()
configure_logging(settings.log_format)
grouped = os.environ.get("CONTACTO_BENCH_NOOP_BROKER") == "grouped"
broker = setup_broker(settings, broker_class=GroupedAckRedisBroker if grouped else RedisBroker)


@dramatiq.actor(actor_name=NOOP_ASYNC, queue_name=QUEUE_USAGE)
async def noop_async(*args: Any, **kwargs: Any) -> None:
    """Runs on the AsyncIO middleware's event loop, like the balance worker's actors."""


@dramatiq.actor(actor_name=NOOP_SYNC, queue_name=QUEUE_USAGE)
def noop_sync(*args: Any, **kwargs: Any) -> None:
    """Runs on the worker thread itself (no event-loop hand-off)."""
