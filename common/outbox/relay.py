"""Publishing outbox rows: dramatiq messages and Redis Stream events.

At-least-once: a row is marked sent in the same transaction that claimed it, after it was
published; a relay killed in between publishes the row again on its next pass. Every message
carries a message id derived from the outbox row id (so duplicates are recognisable) and
every stream entry its `outbox_id`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import dramatiq
import structlog
from redis import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from common.broker.enqueue_many import enqueue_many
from common.crashpoints import crash_point
from common.db.engine import raw_connection
from common.db.hotpool import ConnectionSource, connection
from common.names import DEST_QUEUE
from common.outbox import store

log = structlog.get_logger(__name__)

_MESSAGE_NS = uuid.UUID("6f1c8a52-1d1b-4c53-9a55-3f0d8f7a2b11")


def message_id_for(outbox_id: int) -> str:
    return str(uuid.uuid5(_MESSAGE_NS, f"outbox-{outbox_id}"))


@dataclass(slots=True)
class Publisher:
    broker: dramatiq.Broker
    redis: Redis
    stream: str
    stream_maxlen: int

    def publish_all(self, rows: Sequence[asyncpg.Record]) -> None:
        """Every row, in order within each destination: the messages in one pipelined call
        (common/broker/enqueue_many.py), the stream entries in another."""
        messages = [_message(row) for row in rows if row["destination"] == DEST_QUEUE]
        if messages:
            enqueue_many(self.broker, messages)
        entries = [row for row in rows if row["destination"] != DEST_QUEUE]
        if entries:
            pipe = self.redis.pipeline(transaction=False)
            for row in entries:
                pipe.xadd(
                    self.stream,
                    {
                        "type": row["target"],
                        "data": row["payload"],
                        "outbox_id": str(row["id"]),
                        "created_at": datetime.now(UTC).isoformat(),
                    },
                    maxlen=self.stream_maxlen,
                    approximate=True,
                )
            pipe.execute()


def _message(row: asyncpg.Record) -> tuple[dramatiq.Message[Any], int | None]:
    delay_ms = max(0, int((row["deliver_at"] - row["db_now"]).total_seconds() * 1000))
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=row["target"],
        actor_name=row["actor_name"],
        args=(),
        kwargs=json.loads(row["payload"]),
        options={},
        message_id=message_id_for(row["id"]),
    )
    return message, delay_ms or None


async def drain_once(source: ConnectionSource, publisher: Publisher, batch_size: int) -> int:
    """Publish up to `batch_size` unsent rows. Returns how many were published."""
    async with connection(source) as conn, conn.transaction():
        rows = await conn.fetch(store.CLAIM, batch_size)
        if not rows:
            return 0
        crash_point("relay.before_publish")
        # The Redis calls are blocking; a thread keeps this loop's LISTEN connection alive.
        await asyncio.to_thread(publisher.publish_all, rows)
        crash_point("relay.after_publish")
        await conn.execute(store.MARK_SENT, [r["id"] for r in rows])
    log.info("outbox.published", rows=len(rows), first_id=rows[0]["id"], last_id=rows[-1]["id"])
    return len(rows)


async def prune_sent(engine: AsyncEngine, keep_days: int = 7) -> str:
    async with raw_connection(engine) as conn:
        status: str = await conn.execute(store.PRUNE, keep_days)
        return status


async def outbox_lag(engine: AsyncEngine) -> tuple[int, float]:
    """(unsent rows, age in seconds of the oldest unsent row)."""
    async with raw_connection(engine) as conn:
        row = await conn.fetchrow(store.LAG)
    assert row is not None
    return int(row["n"]), float(row["age"] or 0)  # float-ok: seconds, not money
