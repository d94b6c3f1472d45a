"""Applying usage debits: one transaction for any number of events and accounts.

Exactly-once: the `usage_events` primary key is claimed in the same transaction as the debit,
so a second delivery (in sequence, or concurrently in another process, which then waits on
the key until the first commits) inserts nothing and debits nothing. The ledger's unique
`(kind, reference)` is a second guard. Lost updates are impossible: accounts are locked
(`FOR UPDATE`, in id order) before their balance is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from common.accounts import lock_accounts, snapshot
from common.policy import StartRecharge, decide_recharge
from common.recharge_start import PolicyConfig, start_auto_run
from common.usage import Rejection, UsageEvent


@dataclass(frozen=True, slots=True)
class Incoming:
    """An event and where it came from (kept with it if it is rejected later)."""

    event: UsageEvent
    message_id: str | None
    actor_name: str
    raw: Any


@dataclass(slots=True)
class DebitResult:
    applied: set[str] = field(default_factory=set)
    duplicates: set[str] = field(default_factory=set)
    rejections: list[Rejection] = field(default_factory=list)
    runs_started: dict[str, int] = field(default_factory=dict)


# One statement for the whole debit: claim the event ids, write the ledger rows with their
# running balance, move the balances. Its CTEs share one snapshot, so `accounts.balance` below is
# the balance before this statement (the rows are already locked by this transaction).
# Insertion is in event-id order (no index-lock cycles between concurrent transactions); the
# ledger follows arrival order (`ord`) so that balance_after reads like a statement.
_DEBIT = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::numeric[], $4::timestamptz[], $5::text[],
                         $6::int[]) AS t(event_id, account_id, amount, occurred_at, kind, ord)
), claimed AS (
    INSERT INTO usage_events (event_id, account_id, amount, occurred_at, kind)
    SELECT event_id, account_id, amount, occurred_at, kind FROM input ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), applied AS (
    SELECT i.event_id, i.account_id, i.amount, i.ord,
           a.balance - sum(i.amount) OVER (PARTITION BY i.account_id ORDER BY i.ord)
               AS balance_after
    FROM input i JOIN claimed c USING (event_id) JOIN accounts a ON a.id = i.account_id
), ledger AS (
    INSERT INTO ledger_entries (account_id, amount, balance_after, kind, reference)
    SELECT account_id, -amount, balance_after, 'usage', event_id FROM applied ORDER BY ord
), moved AS (
    UPDATE accounts AS a SET balance = a.balance - t.total, updated_at = now()
    FROM (SELECT account_id, sum(amount) AS total FROM applied GROUP BY account_id) t
    WHERE a.id = t.account_id
    RETURNING a.id, a.balance
)
SELECT event_id AS id, NULL::numeric AS balance FROM claimed
UNION ALL
SELECT id, balance FROM moved
"""
_EXISTING_EVENTS = """
SELECT event_id, account_id, amount FROM usage_events WHERE event_id = ANY($1::text[])
"""
_INSERT_REJECTIONS = """
INSERT INTO rejected_usage (fingerprint, message_id, actor_name, event_id, account_id, reason,
                            payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[])
ON CONFLICT (fingerprint) DO NOTHING
"""


def reject(item: Incoming, reason: str) -> Rejection:
    return Rejection(
        reason,
        item.raw,
        item.message_id,
        item.actor_name,
        item.event.event_id,
        item.event.account_id,
    )


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


async def apply_usage(
    conn: asyncpg.Connection[Any],
    items: Sequence[Incoming],
    rejections: Sequence[Rejection],
    config: PolicyConfig,
) -> DebitResult:
    """Debit `items` and keep `rejections`, all in one transaction on `conn`."""
    result = DebitResult(rejections=list(rejections))
    async with conn.transaction():
        if items:
            await _debit(conn, items, config, result)
        await store_rejections(conn, result.rejections)
    return result


async def _debit(
    conn: asyncpg.Connection[Any],
    items: Sequence[Incoming],
    config: PolicyConfig,
    result: DebitResult,
) -> None:
    accounts = await lock_accounts(conn, [i.event.account_id for i in items])

    # First occurrence of an event id wins within the batch; the database decides across.
    candidates: dict[str, Incoming] = {}
    for item in items:
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
    if not candidates:
        return

    arrival = {id(item): n for n, item in enumerate(items)}
    ordered = [candidates[k] for k in sorted(candidates)]
    rows = await conn.fetch(
        _DEBIT,
        [i.event.event_id for i in ordered],
        [i.event.account_id for i in ordered],
        [i.event.amount for i in ordered],
        [i.event.occurred_at for i in ordered],
        [i.event.kind for i in ordered],
        [arrival[id(i)] for i in ordered],
    )
    inserted = {r["id"] for r in rows if r["balance"] is None}
    new_balances = {r["id"]: r["balance"] for r in rows if r["balance"] is not None}
    if len(inserted) < len(ordered):
        await _classify_existing(
            conn, [i for i in ordered if i.event.event_id not in inserted], result
        )
    result.applied |= inserted
    ids = sorted(new_balances)
    balances = {acc_id: row["balance"] for acc_id, row in accounts.items()}
    for item in candidates.values():
        if item.event.event_id in inserted:
            balances[item.event.account_id] -= item.event.amount
    for account_id in ids:  # the row locks make a difference impossible: checked all the same
        if new_balances[account_id] != balances[account_id]:
            raise RuntimeError(f"balance drift on {account_id}: {new_balances[account_id]}")

    for account_id in ids:
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


def _duplicate(first: Incoming, again: Incoming, result: DebitResult) -> None:
    a, b = first.event, again.event
    if (a.account_id, a.amount) == (b.account_id, b.amount):
        result.duplicates.add(b.event_id)
    else:
        result.rejections.append(
            reject(
                again,
                f"event_id {b.event_id!r} reused with a different "
                "account or amount in the same batch",
            )
        )


async def _classify_existing(
    conn: asyncpg.Connection[Any], items: Sequence[Incoming], result: DebitResult
) -> None:
    """Events whose id was already recorded: a redelivery (ignored) or a conflicting reuse."""
    stored = {
        row["event_id"]: (row["account_id"], row["amount"])
        for row in await conn.fetch(_EXISTING_EVENTS, [i.event.event_id for i in items])
    }
    for item in items:
        ev = item.event
        if stored.get(ev.event_id) == (ev.account_id, ev.amount):
            result.duplicates.add(ev.event_id)
        else:
            result.rejections.append(
                reject(
                    item,
                    f"event_id {ev.event_id!r} was already "
                    "recorded with a different account or amount",
                )
            )
