"""Retry worker: consumes queue `retries`.

`record_failure(run_id)`: a failed attempt arms the next tier (75/50/25/0 % of T) or suspends
the account, exactly once per run. `recheck_tier(account_id)`: a delayed re-check that fires an
armed tier when its level is crossed and the minimum interval has passed, so an idle account
still walks the ladder. Both are safe to deliver twice.
"""

from __future__ import annotations

import dramatiq
import structlog

from common.db.engine import raw_connection
from common.metrics import metrics
from common.names import ACTOR_RECHECK_TIER, ACTOR_RECORD_FAILURE, QUEUE_RETRIES
from common.recharge.config import PolicyConfig
from common.recharge.ladder import AlreadyHandled, Suspended
from common.recharge.ladder import recheck_tier as recheck
from common.recharge.ladder import record_failure as handle_failure
from workers._broker import broker, settings  # noqa: F401  (declares the broker first)
from workers._context import message_context
from workers._resources import resources

log = structlog.get_logger("workers.retry")
POLICY = PolicyConfig.from_settings(settings)


@dramatiq.actor(actor_name=ACTOR_RECORD_FAILURE, queue_name=QUEUE_RETRIES)
@message_context(bind=("run_id",))
async def record_failure(run_id: int) -> None:
    async with raw_connection(resources().engine) as conn:
        outcome = await handle_failure(conn, run_id, POLICY)
    log.info("ladder.failure_recorded", run_id=run_id, outcome=outcome)
    if not isinstance(outcome, AlreadyHandled):
        metrics().recharges.labels("failed").inc()
    if isinstance(outcome, Suspended) and outcome.newly:
        metrics().accounts_suspended.inc()


@dramatiq.actor(actor_name=ACTOR_RECHECK_TIER, queue_name=QUEUE_RETRIES)
@message_context(bind=("account_id",))
async def recheck_tier(account_id: str) -> None:
    async with raw_connection(resources().engine) as conn:
        outcome = await recheck(conn, account_id, POLICY)
    log.info("ladder.rechecked", account_id=account_id, outcome=outcome)
