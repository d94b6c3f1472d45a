"""The balance worker's service: turn decoded usage submissions into committed debits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from common.db.errors import INPUT_ERRORS, retry_conflicts
from common.db.hotpool import ConnectionSource, connection
from common.recharge.config import PolicyConfig
from common.usage.debits import DebitResult, apply_usage, reject
from common.usage.decode import Incoming, Rejection, Submission

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    applied: int
    duplicates: int
    rejected: list[str]  # the reasons, one per rejected event
    runs_started: dict[str, int]


async def apply_submissions(
    engine: ConnectionSource, config: PolicyConfig, subs: Sequence[Submission]
) -> list[Outcome]:
    """Apply every submission in one transaction; isolate input the database refuses."""
    items = [i for s in subs for i in s.items]
    rejections = [r for s in subs for r in s.rejections]
    try:
        result = await _apply(engine, config, items, rejections)
    except INPUT_ERRORS as exc:
        log.warning("usage.group_refused", error=str(exc), events=len(items))
        result = await _apply_one_by_one(engine, config, items, rejections)
    return [_outcome(s, result) for s in subs]


async def _apply(
    engine: ConnectionSource,
    config: PolicyConfig,
    items: Sequence[Incoming],
    rejections: Sequence[Rejection],
) -> DebitResult:
    async def attempt() -> DebitResult:
        async with connection(engine) as conn:
            return await apply_usage(conn, items, rejections, config)

    return await retry_conflicts(attempt)


async def _apply_one_by_one(
    engine: ConnectionSource,
    config: PolicyConfig,
    items: Sequence[Incoming],
    rejections: Sequence[Rejection],
) -> DebitResult:
    """Each event in its own transaction: one poisonous event cannot hold back the others."""
    total = await _apply(engine, config, [], rejections)
    for item in items:
        try:
            one = await _apply(engine, config, [item], [])
        except INPUT_ERRORS as exc:
            one = await _apply(engine, config, [], [reject(item, f"database refused: {exc}")])
        total.applied |= one.applied
        total.duplicates |= one.duplicates
        total.rejections += one.rejections
        total.runs_started.update(one.runs_started)
    return total


def _outcome(sub: Submission, result: DebitResult) -> Outcome:
    ids = {i.event.event_id for i in sub.items}
    accounts = {i.event.account_id for i in sub.items}
    return Outcome(
        applied=len(ids & result.applied),
        duplicates=len(ids & result.duplicates),
        rejected=[r.reason for r in result.rejections if r.message_id == sub.message_id],
        runs_started={a: r for a, r in result.runs_started.items() if a in accounts},
    )
