"""Usage that could not be applied: kept with its reason, deduplicated on a fingerprint, and
listed for inspection (`contacto-billing usage rejected`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from common.usage.decode import Rejection

_INSERT_REJECTIONS = """
INSERT INTO rejected_usage (fingerprint, message_id, actor_name, event_id, account_id, reason,
                            payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[])
ON CONFLICT (fingerprint) DO NOTHING
"""
_LIST_REJECTED = """
SELECT id, rejected_at, actor_name, message_id, event_id, account_id, reason, payload
FROM rejected_usage ORDER BY id DESC LIMIT $1
"""


async def store_rejections(conn: asyncpg.Connection[Any], rejections: Sequence[Rejection]) -> None:
    if not rejections:
        return
    await conn.execute(
        _INSERT_REJECTIONS,
        [r.fingerprint for r in rejections],
        [r.message_id for r in rejections],
        [r.actor_name for r in rejections],
        [r.event_id for r in rejections],
        [r.account_id for r in rejections],
        [r.reason for r in rejections],
        [r.payload_json() for r in rejections],
    )


async def list_rejected(conn: asyncpg.Connection[Any], limit: int = 100) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_LIST_REJECTED, limit)]
