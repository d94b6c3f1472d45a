"""Reference point: the balance worker's `record_usage` without group commit.

Same decoding, same service (`apply_submissions`: one pooled connection, one transaction via
`common.usage.debits.apply_usage`), same log line, but each message is its own transaction. This is
the "plain actor doing one transaction per message" the targets are stated against. Run by
bench.pipeline as `python -m dramatiq bench._plain_worker --queues usage`.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from common.broker.factory import setup_broker
from common.logging import configure_logging
from common.names import ACTOR_RECORD_USAGE, QUEUE_USAGE
from common.recharge.config import PolicyConfig
from common.usage.decode import decode_single
from common.usage.service import apply_submissions
from config.settings import get_settings
from workers._resources import ResourcesMiddleware, resources

settings = get_settings()
configure_logging(settings.log_format)
broker = setup_broker(
    settings, extra_middleware=[ResourcesMiddleware(settings)], broker_class=RedisBroker
)
log = structlog.get_logger("bench.plain")
policy = PolicyConfig.from_settings(settings)


@dramatiq.actor(actor_name=ACTOR_RECORD_USAGE, queue_name=QUEUE_USAGE)
async def record_usage(*args: Any, **kwargs: Any) -> None:
    message = CurrentMessage.get_current_message()
    message_id = message.message_id if message is not None else None
    sub = decode_single(args, kwargs, message_id=message_id, actor_name=ACTOR_RECORD_USAGE)
    [outcome] = await apply_submissions(resources().engine, policy, [sub])
    log.info(
        "usage.recorded",
        message_id=message_id,
        actor=ACTOR_RECORD_USAGE,
        applied=outcome.applied,
        duplicates=outcome.duplicates,
        rejected=len(outcome.rejected),
        recharges_started=outcome.runs_started or None,
    )
