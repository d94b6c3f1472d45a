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
# The customer's low-balance alert level was crossed downwards (once per crossing).
EVENT_BALANCE_LOW: Final = "balance.low"

# The actors whose messages are our own work, re-published by the reconciler when a broker lost
# them (common/recharge/reconcile.py); usage is the upstream's to publish again.
RECONCILED_ACTORS: Final = (ACTOR_RUN_RECHARGE, ACTOR_RECORD_FAILURE, ACTOR_RECHECK_TIER)

# PostgreSQL advisory lock (transaction-scoped) held by the reconciler's pass, so that two
# relays never both re-publish the same work. The bytes of "reconcil".
RECONCILE_LOCK_KEY: Final = 0x7265636F6E63696C

# PostgreSQL NOTIFY channel the relay listens on; the transaction that writes an outbox row
# notifies it, and the notification is delivered only on commit.
OUTBOX_CHANNEL: Final = "contacto_outbox"
# What a notification on OUTBOX_CHANNEL announces: a message for a worker (the relay publishes at
# once), or only domain events (it may gather a few milliseconds' worth first).
NOTIFY_MESSAGE: Final = "message"
NOTIFY_EVENT: Final = "event"


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


# The billing console's Redis keys (web/console/), under the broker namespace N so that a test
# session's keys are found and removed with the rest of its namespace:
#
#     N:console:session:<id>        a console session (JSON), expiring after its idle time
#     N:console:epoch:<account>     bumped when the password changes: older sessions end
#     N:console:login-fails:<addr>  failed logins from one client address (expiring counter)
#     N:console:ghost-fails:<sha256>  failed logins of one unknown username (expiring counter)


def console_session_key(namespace: str, session_id: str) -> str:
    return f"{namespace}:console:session:{session_id}"


def console_epoch_key(namespace: str, account_id: str) -> str:
    return f"{namespace}:console:epoch:{account_id}"


def console_login_failures_key(namespace: str, address: str) -> str:
    return f"{namespace}:console:login-fails:{address}"


def console_unknown_user_failures_key(namespace: str, username_digest: str) -> str:
    return f"{namespace}:console:ghost-fails:{username_digest}"
