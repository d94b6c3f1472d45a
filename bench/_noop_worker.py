"""No-op actors on the same broker factory, middleware and queue as the balance worker.

Run by bench/pipeline.py as `python -m dramatiq bench._noop_worker --queues usage` (cwd = the
repository root). The messages it consumes carry the very same payload as `record_usage`
messages, only the actor name differs, so decoding costs the same: what remains is dramatiq's
own cost per message (fetch, decode, middleware, thread hand-off, ack).
"""

from __future__ import annotations

from typing import Any

import dramatiq

from common.logging import configure_logging
from common.names import QUEUE_USAGE
from config.broker import setup_broker
from config.settings import get_settings

NOOP_ASYNC = "bench_noop_async"
NOOP_SYNC = "bench_noop_sync"

settings = get_settings()
configure_logging(settings.log_format)
broker = setup_broker(settings)


@dramatiq.actor(actor_name=NOOP_ASYNC, queue_name=QUEUE_USAGE)
async def noop_async(*args: Any, **kwargs: Any) -> None:
    """Runs on the AsyncIO middleware's event loop, like the balance worker's actors."""


@dramatiq.actor(actor_name=NOOP_SYNC, queue_name=QUEUE_USAGE)
def noop_sync(*args: Any, **kwargs: Any) -> None:
    """Runs on the worker thread itself (no event-loop hand-off)."""
