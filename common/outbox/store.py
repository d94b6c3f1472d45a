"""The transactional outbox: what a transaction must send is written in that transaction.

Rows are published by the relay (workers/relay.py) after commit. `pg_notify` is delivered
only when the transaction commits, which wakes the relay at once; its poll catches anything a
lost notification or a crashed relay left unsent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from common.money import format_amount
from common.names import (
    ACTOR_QUEUES,
    DEST_QUEUE,
    DEST_STREAM,
    NOTIFY_EVENT,
    NOTIFY_MESSAGE,
    OUTBOX_CHANNEL,
)

# The row and the relay's wake-up in one round trip (a data-modifying CTE always runs).
_INSERT = """
WITH written AS (
    INSERT INTO outbox (destination, target, actor_name, payload, deliver_at)
    VALUES ($1, $2, $3, $4, coalesce($5, now()))
    RETURNING id
)
SELECT (SELECT id FROM written) AS id, pg_notify($6, $7)
"""


async def enqueue_message(
    conn: asyncpg.Connection[Any],
    actor_name: str,
    kwargs: dict[str, Any],
    *,
    deliver_at: datetime | None = None,
) -> int:
    """Ask for a dramatiq message to `actor_name` (its queue is looked up in common.names)."""
    queue = ACTOR_QUEUES[actor_name]
    outbox_id: int = await conn.fetchval(
        _INSERT,
        DEST_QUEUE,
        queue,
        actor_name,
        json.dumps(kwargs),
        deliver_at,
        OUTBOX_CHANNEL,
        NOTIFY_MESSAGE,
    )
    return outbox_id


# Several messages to one actor, one round trip: the rows in the order given.
_INSERT_MANY = """
WITH written AS (
    INSERT INTO outbox (destination, target, actor_name, payload)
    SELECT $1, $2, $3, payload FROM unnest($4::text[]) WITH ORDINALITY AS p (payload, n)
    ORDER BY n
    RETURNING id
)
SELECT (SELECT array_agg(id ORDER BY id) FROM written) AS ids, pg_notify($5, $6)
"""


async def enqueue_messages(
    conn: asyncpg.Connection[Any], actor_name: str, kwargs: Sequence[dict[str, Any]]
) -> list[int]:
    """enqueue_message for each of `kwargs`, delivered now, in one statement."""
    if not kwargs:
        return []
    ids: list[int] = await conn.fetchval(
        _INSERT_MANY,
        DEST_QUEUE,
        ACTOR_QUEUES[actor_name],
        actor_name,
        [json.dumps(k) for k in kwargs],
        OUTBOX_CHANNEL,
        NOTIFY_MESSAGE,
    )
    return ids


def _jsonable(value: object) -> str:
    # Money leaves as canonical decimal text ("75.00", never 75.00000000 or a float).
    if isinstance(value, Decimal):
        return format_amount(value)
    return str(value)


async def emit_event(conn: asyncpg.Connection[Any], event_type: str, data: dict[str, Any]) -> int:
    """Ask for a domain event on the Redis Stream (`recharge.succeeded`, `account.suspended`…)."""
    outbox_id: int = await conn.fetchval(
        _INSERT,
        DEST_STREAM,
        event_type,
        None,
        json.dumps(data, default=_jsonable),
        None,
        OUTBOX_CHANNEL,
        NOTIFY_EVENT,
    )
    return outbox_id


# The relay's statements (common/outbox/relay.py): claim unsent rows, mark them, prune, lag.
CLAIM = """
SELECT id, destination, target, actor_name, payload, deliver_at, now() AS db_now
FROM outbox
WHERE sent_at IS NULL
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
MARK_SENT = "UPDATE outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY($1)"
PRUNE = "DELETE FROM outbox WHERE sent_at < now() - make_interval(days => $1)"
LAG = """
SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS age
FROM outbox WHERE sent_at IS NULL
"""
# Messages committed but not yet published: the reconciler counts them as on their way.
UNSENT_MESSAGES = """
SELECT actor_name, payload FROM outbox
WHERE sent_at IS NULL AND destination = 'queue' AND actor_name = ANY($1::text[])
"""
