"""Charge worker: consumes queue `charges` (actor `run_recharge(run_id)`).

Runs a recharge run to its end, one charge at a time (common/recharge/charging.py). Delivered twice?
The second delivery finds the run finished, or its pending charge, whose idempotency key the
gateway has already seen. Transient gateway errors raise, so dramatiq retries the message with
backoff and the same key is replayed; our own misconfiguration is not retried: the message is
dead-lettered, an error is logged, the run stays pending (and resumable with `dlq requeue`),
and the customer's tier is untouched. A charge that can never be sent (no card, an amount the
limits now refuse) is a failed attempt, recorded without a call.
"""

from __future__ import annotations

import dramatiq

from common.gateway import GatewayConfigError
from common.names import ACTOR_RUN_RECHARGE, QUEUE_CHARGES
from common.recharge.charging import run_to_completion
from common.recharge.config import ChargeLimits
from workers._broker import broker, settings  # noqa: F401  (declares the broker first)
from workers._context import message_context
from workers._resources import gateway, hot_pool, use_hot_pool

LIMITS = ChargeLimits.from_settings(settings)
# A run holds a kept connection only around its two transactions, never across the gateway call:
# CONTACTO_DB_POOL_SIZE of them serve the 16 threads.
use_hot_pool(settings.db_pool_size)


@dramatiq.actor(
    actor_name=ACTOR_RUN_RECHARGE,
    queue_name=QUEUE_CHARGES,
    # Ours to fix, never the customer's: dead-letter at once instead of retrying.
    throws=(GatewayConfigError,),
)
@message_context(bind=("run_id",))
async def run_recharge(run_id: int) -> None:
    await run_to_completion(hot_pool(), gateway(), run_id, LIMITS)
