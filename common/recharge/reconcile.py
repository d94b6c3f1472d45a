"""The reconciler: re-publish our own work that a broker forgot.

A Redis without persistence restarting, a FLUSHDB, a failover to a replica that lagged: every
`run_recharge`, `record_failure` and `recheck_tier` message already published (its outbox row
marked sent) is gone, and the database alone still knows the work is unfinished. The relay
runs `reconcile_once` every CONTACTO_RECONCILE_INTERVAL_S; each pass, under a PostgreSQL
advisory lock (one reconciler at a time, however many relays):

    1. reads the unfinished work that made no progress for CONTACTO_RECONCILE_AFTER_S: runs
       still `pending` (run_recharge), runs still `failing` (record_failure), armed accounts
       whose re-check is overdue (recheck_tier), see the statements in `store`;
    2. skips what the broker still holds (delayed, ready, or in flight, with a live or a dead
       worker: dramatiq's maintenance gives the latter back) or what an unsent outbox row is
       about to publish, and what is dead-lettered: that is for ops (`dlq requeue`), since the
       message died of something a second copy would die of too;
    3. writes, for the rest, an outbox row and a progress stamp in the same transaction, so the
       message goes out once (through the relay, like any other) and the next pass waits
       CONTACTO_RECONCILE_AFTER_S again before it looks at that work.

A duplicate is harmless by design, so a race that re-publishes work a worker was finishing costs
a no-op: `run_recharge` re-reads the run's state and its pending charge (and asks the gateway what
an earlier call did), `record_failure` counts a failure only while its run is `failing`,
`recheck_tier` re-evaluates the pure policy under the account lock.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from common.broker.inspect import held_messages
from common.db.engine import raw_connection
from common.metrics import metrics
from common.names import (
    ACTOR_RECHECK_TIER,
    ACTOR_RECORD_FAILURE,
    ACTOR_RUN_RECHARGE,
    QUEUE_CHARGES,
    QUEUE_RETRIES,
    RECONCILE_LOCK_KEY,
    RECONCILED_ACTORS,
)
from common.outbox.store import UNSENT_MESSAGES, enqueue_message
from common.recharge import store
from common.recharge.policy import MAX_TIER, TIER_FRACTIONS
from config.settings import Settings

log = structlog.get_logger(__name__)

# The queues of RECONCILED_ACTORS.
RECONCILED_QUEUES = (QUEUE_CHARGES, QUEUE_RETRIES)
# Work re-published per pass at most; the next pass takes the rest.
BATCH_SIZE = 500

# (actor name, its keyword arguments as canonical JSON): one piece of work, however published.
WorkKey = tuple[str, str]


def work_key(actor_name: str, kwargs: dict[str, Any]) -> WorkKey:
    return actor_name, json.dumps(kwargs, sort_keys=True)


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    after: timedelta
    retry_min_interval: timedelta
    batch_size: int = BATCH_SIZE

    @classmethod
    def from_settings(cls, settings: Settings) -> ReconcileConfig:
        return cls(
            after=timedelta(seconds=settings.reconcile_after_s),
            retry_min_interval=timedelta(seconds=settings.retry_min_interval_s),
        )


@dataclass(frozen=True, slots=True)
class Work:
    actor_name: str
    kwargs: dict[str, Any]
    run_id: int | None = None  # a run's message; else an account's re-check

    @property
    def key(self) -> WorkKey:
        return work_key(self.actor_name, self.kwargs)


@dataclass(frozen=True, slots=True)
class Republished:
    work: Work
    outbox_id: int


@dataclass(slots=True)
class ReconcilePass:
    locked: bool = True  # False: another reconciler held the lock, nothing was looked at
    stale: int = 0  # unfinished work without progress for `after`
    held: int = 0  # of which the broker still holds the message (or an unsent outbox row)
    dead: int = 0  # of which the message is dead-lettered: for ops
    republished: list[Republished] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BrokerView:
    held: frozenset[WorkKey]
    dead: frozenset[WorkKey]


def broker_view(client: redis.Redis, namespace: str) -> BrokerView:
    """What the broker holds of RECONCILED_QUEUES, as work keys. Blocking (Redis)."""
    messages = held_messages(client, namespace, RECONCILED_QUEUES)

    def keys(found: list[dict[str, Any]]) -> frozenset[WorkKey]:
        return frozenset(
            work_key(str(m.get("actor_name")), m.get("kwargs") or {})
            for m in found
            if isinstance(m.get("kwargs") or {}, dict)
        )

    return BrokerView(held=keys(messages.live), dead=keys(messages.dead))


async def _stale_work(conn: Any, config: ReconcileConfig) -> list[Work]:
    after_s = config.after.total_seconds()
    runs = await conn.fetch(store.STALE_RUNS, after_s, config.batch_size)
    work = [
        Work(
            ACTOR_RUN_RECHARGE if run["state"] == "pending" else ACTOR_RECORD_FAILURE,
            {"run_id": run["id"]},
            run_id=run["id"],
        )
        for run in runs
    ]
    fractions = [TIER_FRACTIONS[tier] for tier in range(1, MAX_TIER + 1)]
    accounts = await conn.fetch(
        store.STALE_RECHECKS,
        after_s,
        config.retry_min_interval.total_seconds(),
        fractions,
        config.batch_size,
    )
    work.extend(Work(ACTOR_RECHECK_TIER, {"account_id": a["id"]}) for a in accounts)
    return work


async def reconcile_once(
    engine: AsyncEngine, client: redis.Redis | None, namespace: str, config: ReconcileConfig
) -> ReconcilePass:
    """One pass (see the module docstring). Raises what PostgreSQL or Redis raised: nothing is
    re-published without knowing what the broker holds.

    `client` None: the broker is RabbitMQ, whose queues cannot be read without taking the
    messages; stale work is re-published without that check (a duplicate is harmless: every
    handler is idempotent), at most once per `after`."""
    result = ReconcilePass()
    async with raw_connection(engine) as conn, conn.transaction():
        if not await conn.fetchval(store.TRY_RECONCILE_LOCK, RECONCILE_LOCK_KEY):
            return ReconcilePass(locked=False)
        stale = await _stale_work(conn, config)
        result.stale = len(stale)
        if not stale:
            return result
        unsent = {
            work_key(row["actor_name"], json.loads(row["payload"]))
            for row in await conn.fetch(UNSENT_MESSAGES, list(RECONCILED_ACTORS))
        }
        # Read after the database: a message acked in between is work that the database
        # already showed unfinished, and re-publishing it is a harmless duplicate.
        view = (
            BrokerView(frozenset(), frozenset())
            if client is None
            else await asyncio.to_thread(broker_view, client, namespace)
        )
        for work in stale:
            if work.key in view.dead:
                result.dead += 1
            elif work.key in view.held or work.key in unsent:
                result.held += 1
            else:
                outbox_id = await enqueue_message(conn, work.actor_name, work.kwargs)
                result.republished.append(Republished(work, outbox_id))
        runs = [r.work.run_id for r in result.republished if r.work.run_id is not None]
        accounts = [
            r.work.kwargs["account_id"]
            for r in result.republished
            if r.work.actor_name == ACTOR_RECHECK_TIER
        ]
        if runs:
            await conn.execute(store.STAMP_RUNS, runs)
        if accounts:
            await conn.execute(store.STAMP_RECHECKS, accounts)
    # Said once committed: a rolled-back pass re-published nothing.
    for r in result.republished:
        log.warning(
            "reconcile.republished",
            kind=r.work.actor_name,
            outbox_id=r.outbox_id,
            **r.work.kwargs,
        )
        metrics().reconcile_republished.labels(r.work.actor_name).inc()
    return result
