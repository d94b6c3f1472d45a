"""The one place that names queues, actors and Redis keys.

Redis key schema (N = CONTACTO_BROKER_NAMESPACE, default "dramatiq"; dramatiq owns these,
see dramatiq/brokers/redis/dispatch.lua):

    N:<queue>                 list of ready message ids
    N:<queue>.msgs            hash message id -> encoded message
    N:<queue>.DQ              list of delayed message ids (due per message "eta")
    N:<queue>.DQ.msgs         hash of delayed messages
    N:<queue>.XQ              zset of dead-lettered ids, scored by time of death
    N:<queue>.XQ.msgs         hash of dead-lettered messages
    N:__acks__.<worker>.<queue>   set of ids fetched but not yet acked by a worker
    N:__heartbeats__          zset worker id -> last heartbeat (ms)

Ours:

    contacto:events           Redis Stream of domain events (CONTACTO_EVENTS_STREAM)
"""

from __future__ import annotations

import re
from typing import Final

QUEUE_USAGE: Final = "usage"
QUEUE_CHARGES: Final = "charges"
QUEUE_RETRIES: Final = "retries"
QUEUES: Final = (QUEUE_USAGE, QUEUE_CHARGES, QUEUE_RETRIES)

ACTOR_RECORD_USAGE: Final = "record_usage"
ACTOR_RECORD_USAGE_BATCH: Final = "record_usage_batch"
ACTOR_RUN_RECHARGE: Final = "run_recharge"
ACTOR_RECHECK_TIER: Final = "recheck_tier"
ACTOR_RECORD_FAILURE: Final = "record_failure"
# The stand-in for a usage queue entry that is no dramatiq message (common/broker/poison.py):
# the balance worker keeps it as rejected usage.
ACTOR_UNDECODABLE: Final = "undecodable_message"

ACTOR_QUEUES: Final = {
    ACTOR_RECORD_USAGE: QUEUE_USAGE,
    ACTOR_RECORD_USAGE_BATCH: QUEUE_USAGE,
    ACTOR_RUN_RECHARGE: QUEUE_CHARGES,
    ACTOR_RECHECK_TIER: QUEUE_RETRIES,
    ACTOR_RECORD_FAILURE: QUEUE_RETRIES,
    ACTOR_UNDECODABLE: QUEUE_USAGE,
}

# Outbox destinations: "queue" rows become dramatiq messages, "stream" rows Redis Stream entries.
DEST_QUEUE: Final = "queue"
DEST_STREAM: Final = "stream"

# Domain events on the Redis Stream (README, "Events").
EVENT_RECHARGE_SUCCEEDED: Final = "recharge.succeeded"
EVENT_RECHARGE_FAILED: Final = "recharge.failed"
EVENT_RECHARGE_CAPPED: Final = "recharge.capped"
EVENT_ACCOUNT_SUSPENDED: Final = "account.suspended"
EVENT_ACCOUNT_REACTIVATED: Final = "account.reactivated"

# PostgreSQL NOTIFY channel the relay listens on; the transaction that writes an outbox row
# notifies it, and the notification is delivered only on commit.
OUTBOX_CHANNEL: Final = "contacto_outbox"


def queue_key(namespace: str, queue: str) -> str:
    return f"{namespace}:{queue}"


def queue_msgs_key(namespace: str, queue: str) -> str:
    return f"{namespace}:{queue}.msgs"


def delay_queue(queue: str) -> str:
    return f"{queue}.DQ"


def dead_letter_key(namespace: str, queue: str) -> str:
    return f"{namespace}:{queue}.XQ"


def dead_letter_msgs_key(namespace: str, queue: str) -> str:
    return f"{namespace}:{queue}.XQ.msgs"


def heartbeats_key(namespace: str) -> str:
    return f"{namespace}:__heartbeats__"


def acks_key(namespace: str, worker_id: str, queue: str) -> str:
    """The set of ids worker `worker_id` (a broker id) fetched from `queue` and has not acked."""
    return f"{namespace}:__acks__.{worker_id}.{queue}"


def acks_prefix(namespace: str) -> str:
    """Prefix of every `N:__acks__.<worker>.<queue>` set."""
    return f"{namespace}:__acks__."


def glob_escape(text: str) -> str:
    """Escape SCAN/KEYS glob characters so a namespace is matched literally."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def namespace_pattern(namespace: str) -> str:
    """SCAN pattern for every key of a dramatiq namespace."""
    return queue_key(glob_escape(namespace), "*")
