"""EXPERIMENTS ONLY: workers.balance with candidate optimisations patched in at import.

Used by `bench/pipeline.py --variants a,b,...` to measure what a proposed change to the worker
would gain before anyone makes it (docs/performance.md). Nothing here is used by the default
benchmark phases or by production. BENCH_VARIANTS (comma-separated) selects:

    noping     engine without pool_pre_ping (the pre-ping is BEGIN; ';'; ROLLBACK per flush)
    held       each flush takes a plain asyncpg connection kept by the process (no SQLAlchemy
               pool checkout / pre-ping / reset); a connection that saw an error is closed
    generic    plan_cache_mode = force_generic_plan on the worker's connections
    merged     common.debits._debit with INSERT usage_events + INSERT ledger_entries + UPDATE
               accounts as ONE statement (data-modifying CTEs): 4 round trips per flush, not 6
    inflight1  GroupCommitter(max_in_flight=1) instead of 2 (bigger, fewer groups)
    quietlog   no per-message "usage.recorded" info line

Written against commit 803c000 and measured there (docs/performance.md, "Experiments"). Since
cae7879 the worker itself keeps its own asyncpg connections (common/db/hotpool.py), runs one
merged debit statement, one flush in flight and no per-message info line, so on later commits
`noping`, `held` and `generic` patch code the hot path no longer uses, and `merged`, `quietlog`,
`inflight1` repeat what the worker already does.

Exactly-once is unchanged by each of them: the same transaction boundaries, the same row locks
and unique keys, the same ack-after-commit; the benchmark's checks run on every variant.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import common.balance_service
import common.debits
import workers._resources
from common.accounts import lock_accounts, snapshot
from common.debits import DebitResult, Incoming, _classify_existing, _duplicate, reject
from common.group_commit import GroupCommitter
from common.policy import StartRecharge, decide_recharge
from common.recharge_start import PolicyConfig, start_auto_run
from config.settings import Settings, get_settings

VARIANTS = {v.strip() for v in os.environ.get("BENCH_VARIANTS", "").split(",") if v.strip()}
KNOWN = {"noping", "held", "generic", "merged", "inflight1", "quietlog"}
if VARIANTS - KNOWN:
    raise SystemExit(f"unknown BENCH_VARIANTS: {sorted(VARIANTS - KNOWN)}")

_SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"} if "generic" in VARIANTS else {}


def _engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    return create_async_engine(
        settings.async_database_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=2,
        pool_pre_ping="noping" not in VARIANTS,
        pool_recycle=3600,
        connect_args={"server_settings": _SERVER_SETTINGS} if _SERVER_SETTINGS else {},
    )


workers._resources.create_engine = _engine  # type: ignore[attr-defined]

_idle: list[asyncpg.Connection[Any]] = []


@asynccontextmanager
async def _held_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = _idle.pop() if _idle else None
    if conn is None or conn.is_closed():
        dsn = get_settings().database_url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn, server_settings=_SERVER_SETTINGS or None)
    healthy = False
    try:
        yield conn
        healthy = not conn.is_closed() and not conn.is_in_transaction()
    finally:
        if healthy:
            _idle.append(conn)
        else:
            conn.terminate()


if "held" in VARIANTS:
    common.balance_service.raw_connection = _held_connection  # type: ignore[attr-defined]


_MERGED = """
WITH ev AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::numeric[], $4::timestamptz[], $5::text[],
                         $6::int[]) AS t(event_id, account_id, amount, occurred_at, kind, ord)
), ins AS (
    INSERT INTO usage_events (event_id, account_id, amount, occurred_at, kind)
    SELECT event_id, account_id, amount, occurred_at, kind FROM ev ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), applied AS (
    SELECT ev.event_id, ev.account_id, ev.amount, ev.ord,
           b.balance - sum(ev.amount) OVER (PARTITION BY ev.account_id ORDER BY ev.ord)
               AS balance_after
    FROM ev JOIN ins USING (event_id)
    JOIN unnest($7::text[], $8::numeric[]) AS b(id, balance) ON b.id = ev.account_id
), led AS (
    INSERT INTO ledger_entries (account_id, amount, balance_after, kind, reference)
    SELECT account_id, -amount, balance_after, 'usage', event_id FROM applied ORDER BY ord
), upd AS (
    UPDATE accounts AS a SET balance = a.balance - t.total, updated_at = now()
    FROM (SELECT account_id, sum(amount) AS total FROM applied GROUP BY account_id) AS t
    WHERE a.id = t.account_id
    RETURNING a.id, a.balance
)
SELECT true AS is_event, event_id AS id, NULL::numeric AS balance FROM ins
UNION ALL
SELECT false, id, balance FROM upd
"""


async def _merged_debit(
    conn: asyncpg.Connection[Any],
    items: Sequence[Incoming],
    config: PolicyConfig,
    result: DebitResult,
) -> None:
    """common.debits._debit with the three writes in one statement (same locks, same keys)."""
    accounts = await lock_accounts(conn, [i.event.account_id for i in items])
    candidates: dict[str, Incoming] = {}
    arrival: dict[str, int] = {}
    for n, item in enumerate(items):
        ev = item.event
        account = accounts.get(ev.account_id)
        if account is None:
            result.rejections.append(reject(item, f"unknown account {ev.account_id!r}"))
        elif account["currency"] != ev.currency:
            result.rejections.append(
                reject(
                    item,
                    f"currency {ev.currency} does not match the account's {account['currency']}",
                )
            )
        elif ev.event_id in candidates:
            _duplicate(candidates[ev.event_id], item, result)
        else:
            candidates[ev.event_id] = item
            arrival[ev.event_id] = n
    if not candidates:
        return
    ordered = [candidates[k] for k in sorted(candidates)]
    bal_ids = sorted({i.event.account_id for i in ordered})
    rows = await conn.fetch(
        _MERGED,
        [i.event.event_id for i in ordered],
        [i.event.account_id for i in ordered],
        [i.event.amount for i in ordered],
        [i.event.occurred_at for i in ordered],
        [i.event.kind for i in ordered],
        [arrival[i.event.event_id] for i in ordered],
        bal_ids,
        [accounts[a]["balance"] for a in bal_ids],
    )
    inserted = {r["id"] for r in rows if r["is_event"]}
    updated = {r["id"]: r["balance"] for r in rows if not r["is_event"]}
    if len(inserted) < len(ordered):
        await _classify_existing(
            conn, [i for i in ordered if i.event.event_id not in inserted], result
        )
    balances = {acc_id: row["balance"] for acc_id, row in accounts.items()}
    touched: dict[str, Decimal] = defaultdict(Decimal)
    for item in items:
        ev = item.event
        if ev.event_id not in inserted or candidates.get(ev.event_id) is not item:
            continue
        balances[ev.account_id] -= ev.amount
        touched[ev.account_id] += ev.amount
        result.applied.add(ev.event_id)
    if set(updated) != set(touched):
        raise RuntimeError(f"updated {sorted(updated)} != touched {sorted(touched)}")
    for acc_id, balance in updated.items():
        if balance != balances[acc_id]:
            raise RuntimeError(f"balance drift on {acc_id}: {balance}")
    for account_id in sorted(touched):
        account = accounts[account_id]
        decision = decide_recharge(
            snapshot(account, balance=balances[account_id]),
            now=account["db_now"],
            retry_min_interval=config.retry_min_interval,
        )
        if isinstance(decision, StartRecharge):
            trigger = "threshold" if decision.tier == 0 else "tier"
            run_id = await start_auto_run(conn, account, decision, config, trigger)
            if run_id is not None:
                result.runs_started[account_id] = run_id


if "merged" in VARIANTS:
    common.debits._debit = _merged_debit

import workers.balance  # noqa: E402  (after the patches: it builds the broker and middleware)
from workers._broker import broker  # noqa: E402
from workers.balance import record_usage, record_usage_batch  # noqa: E402

if "inflight1" in VARIANTS:

    def _one_in_flight(flush: Any, **kwargs: Any) -> GroupCommitter[Any, Any]:
        return GroupCommitter(flush, max_in_flight=1, **kwargs)

    workers.balance.GroupCommitter = _one_in_flight  # type: ignore[attr-defined,assignment]


class _NoInfo:
    """The worker's logger without info lines (warnings and errors still go out)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def info(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


if "quietlog" in VARIANTS:
    workers.balance.log = _NoInfo(workers.balance.log)

__all__ = ["broker", "record_usage", "record_usage_batch"]
