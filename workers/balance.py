"""Balance worker: consumes queue `usage` (README, "The message contract" and "How the pieces fit").

Actors `record_usage(**event)` and `record_usage_batch(events=[...])`. Messages delivered at
the same moment to this process share one transaction (group commit); each actor returns,
and so is acknowledged, only after that transaction committed. A message may be delivered
twice (a worker killed before its ack, a publisher retrying): the event id makes the second
delivery a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import CurrentMessage

from common.crashpoints import crash_point
from common.metrics import metrics
from common.names import (
    ACTOR_RECORD_USAGE,
    ACTOR_RECORD_USAGE_BATCH,
    ACTOR_UNDECODABLE,
    QUEUE_USAGE,
)
from common.recharge.config import PolicyConfig
from common.usage.decode import Rejection, Submission, decode_batch, decode_single
from common.usage.group_commit import GroupCommitter
from common.usage.rejected import store_rejections
from common.usage.service import Outcome, apply_submissions
from workers._broker import broker, settings  # noqa: F401  (declares the broker first)
from workers._context import message_context
from workers._resources import hot_pool, use_hot_pool

log = structlog.get_logger("workers.balance")

_committer: GroupCommitter[Submission, Outcome] | None = None


POLICY = PolicyConfig.from_settings(settings)
# The group commit's transactions at once; a rejected raw entry waits for one of them.
use_hot_pool(settings.usage_max_in_flight)


async def _flush(subs: Sequence[Submission]) -> list[Outcome]:
    metrics().usage_transaction_messages.observe(len(subs))
    return await apply_submissions(hot_pool(), POLICY, subs)


def _get_committer() -> GroupCommitter[Submission, Outcome]:
    # Created lazily on the worker's event loop, after the fork.
    global _committer
    if _committer is None:
        _committer = GroupCommitter(
            _flush,
            max_group_size=settings.usage_coalesce_max_events,
            max_in_flight=settings.usage_max_in_flight,
            overlap_min_size=settings.usage_overlap_min_events,
        )
    return _committer


def _message_id() -> str | None:
    message = CurrentMessage.get_current_message()
    return message.message_id if message is not None else None


async def _submit(sub: Submission) -> None:
    outcome = await _get_committer().submit(sub, size=max(1, sub.size))
    crash_point("balance.after_commit")  # committed, not yet acknowledged
    m = metrics()
    m.debits_applied.inc(outcome.applied)
    m.debits_duplicate.inc(outcome.duplicates)
    m.debits_rejected.inc(len(outcome.rejected))
    # Debug, not info: one line per usage message would be most of the log volume; the
    # counters above (and rejections, logged as warnings) tell the story. message_id and actor
    # are already bound by message_context.
    log.debug(
        "usage.recorded",
        applied=outcome.applied,
        duplicates=outcome.duplicates,
        rejected=len(outcome.rejected),
        recharges_started=outcome.runs_started or None,
    )
    for reason in outcome.rejected:
        log.warning("usage.rejected", reason=reason)


# Input errors never raise (they become rejected_usage rows); what raises is a real fault,
# for which dramatiq retries the message with backoff.
@dramatiq.actor(actor_name=ACTOR_RECORD_USAGE, queue_name=QUEUE_USAGE)
@message_context()
async def record_usage(*args: Any, **kwargs: Any) -> None:
    message_id = _message_id()
    await _submit(decode_single(args, kwargs, message_id=message_id, actor_name=ACTOR_RECORD_USAGE))


@dramatiq.actor(actor_name=ACTOR_RECORD_USAGE_BATCH, queue_name=QUEUE_USAGE)
@message_context()
async def record_usage_batch(*args: Any, **kwargs: Any) -> None:
    message_id = _message_id()
    await _submit(
        decode_batch(args, kwargs, message_id=message_id, actor_name=ACTOR_RECORD_USAGE_BATCH)
    )


# The stand-in the consumer hands out for a queue entry that is no dramatiq message (not JSON,
# not dramatiq's fields, an id without data: common/broker/poison.py); the raw bytes (base64,
# bounded) and the reason are kept like any other rejected usage. Redelivered, the same
# stand-in has the same fingerprint and is kept once.
@dramatiq.actor(actor_name=ACTOR_UNDECODABLE, queue_name=QUEUE_USAGE)
@message_context()
async def undecodable_message(*args: Any, **kwargs: Any) -> None:
    reason = str(kwargs.get("reason") or "undecodable queue entry")
    payload = {k: v for k, v in kwargs.items() if k != "reason"}
    rejection = Rejection(
        reason=f"undecodable message: {reason}",
        payload=payload,
        message_id=_message_id(),
        actor_name=ACTOR_UNDECODABLE,
    )
    async with hot_pool().connection() as conn:
        await store_rejections(conn, [rejection])
    metrics().debits_rejected.inc()
    log.warning("usage.rejected", reason=rejection.reason)
