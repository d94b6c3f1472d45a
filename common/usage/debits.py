"""Applying usage debits: one transaction for any number of events and accounts.

Exactly-once: the `usage_events` primary key is claimed in the same transaction as the debit,
so a second delivery (in sequence, or concurrently in another process, which then waits on
the key until the first commits) inserts nothing and debits nothing. The ledger's unique
`(kind, reference)` is a second guard. Lost updates are impossible: accounts are locked
(`FOR UPDATE`, in id order) before their balance is read, all in one statement (`_DEBIT`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from common.accounts.status import enforce_prepaid
from common.accounts.store import (
    ACCOUNT_COLUMN_COUNT,
    ACCOUNT_COLUMNS,
    MARK_LOW_BALANCE_ALERTED,
    snapshot,
)
from common.names import EVENT_BALANCE_LOW
from common.outbox.store import emit_event
from common.recharge.config import PolicyConfig
from common.recharge.policy import StartRecharge, decide_recharge
from common.recharge.runs import RunStart, auto_start, start_runs
from common.usage.decode import Incoming, Rejection
from common.usage.rejected import store_rejections


@dataclass(slots=True)
class DebitResult:
    applied: set[str] = field(default_factory=set)
    duplicates: set[str] = field(default_factory=set)
    rejections: list[Rejection] = field(default_factory=list)
    runs_started: dict[str, int] = field(default_factory=dict)


# One statement for the whole debit: lock the accounts, claim the event ids, write the ledger
# rows with their running balance, move the balances. One round trip: while the account locks
# are held, the only Python that runs is the handling of this result and the policy check.
#
# Order inside the statement, which is what keeps it free of deadlocks: `claimed` sorts its
# rows, so it reads all of `valid`, hence all of `locked`, before it inserts anything; every
# account is therefore locked (in id order, ORDER BY under FOR UPDATE) before any event id is
# claimed (in event-id order), the same order every concurrent debit follows.
#
# Balances come from `locked`, never from a plain read of `accounts`: the statement's snapshot
# predates the locks, and `locked` returns each row as it is after any transaction we waited
# for (EvalPlanQual); the UPDATE in `moved` re-reads that latest row the same way.
#
# Result: one row per locked account (`event_id` NULL; `new_balance` NULL if nothing was
# debited), then one row per event NOT claimed: `valid = false` for an unknown account or another
# currency, `valid = true` for an id already recorded. Usually there are none of the latter.
_DEBIT = f"""
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]::numeric[], $4::timestamptz[],
                         $5::text[], $6::text[]) WITH ORDINALITY
        AS t(event_id, account_id, amount, occurred_at, kind, currency, ord)
), locked AS (
    SELECT {ACCOUNT_COLUMNS}
    FROM accounts a
    WHERE a.id = ANY($7::text[])
    ORDER BY a.id
    FOR UPDATE OF a
), valid AS (
    SELECT i.event_id, i.account_id, i.amount, i.occurred_at, i.kind, i.ord, l.balance
    FROM input i JOIN locked l ON l.id = i.account_id AND l.currency = i.currency
), claimed AS (
    INSERT INTO usage_events (event_id, account_id, amount, occurred_at, kind)
    SELECT event_id, account_id, amount, occurred_at, kind FROM valid ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), applied AS (
    SELECT v.event_id, v.account_id, v.amount, v.ord,
           v.balance - sum(v.amount) OVER (PARTITION BY v.account_id ORDER BY v.ord)
               AS balance_after
    FROM valid v
    -- A membership test, not a join: the hot connections use generic plans, in which every CTE
    -- is estimated at a row or two, and a join of `valid` with `claimed` became a nested loop,
    -- quadratic in the events (16 ms of 23 for 300). `IS TRUE` keeps the IN from being turned
    -- into that join: it stays a hashed subplan, linear whatever the size.
    WHERE (v.event_id IN (SELECT event_id FROM claimed)) IS TRUE
), ledger AS (
    INSERT INTO ledger_entries (account_id, amount, balance_after, kind, reference)
    SELECT account_id, -amount, balance_after, 'usage', event_id FROM applied ORDER BY ord
), moved AS (
    UPDATE accounts AS a SET balance = a.balance - t.total, updated_at = now()
    FROM (SELECT account_id, sum(amount) AS total FROM applied GROUP BY account_id) t
    WHERE a.id = t.account_id
    RETURNING a.id, a.balance
)
SELECT l.*, m.balance AS new_balance, now() AS db_now,
       NULL::text AS event_id, NULL::boolean AS valid
FROM locked l LEFT JOIN moved m USING (id)
UNION ALL
SELECT {", ".join(["NULL"] * ACCOUNT_COLUMN_COUNT)}, NULL, NULL,
       i.event_id, v.event_id IS NOT NULL
FROM input i LEFT JOIN valid v USING (event_id) LEFT JOIN claimed c USING (event_id)
WHERE c.event_id IS NULL
"""
_EXISTING_EVENTS = """
SELECT event_id, account_id, amount FROM usage_events WHERE event_id = ANY($1::text[])
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
    # First occurrence of an event id wins within the batch; the database decides across.
    candidates: dict[str, Incoming] = {}
    repeats: list[Incoming] = []
    for item in items:
        if item.event.event_id in candidates:
            repeats.append(item)
        else:
            candidates[item.event.event_id] = item

    # In arrival order (the ledger's order); the statement sorts what it must.
    events = [i.event for i in candidates.values()]
    rows = await conn.fetch(
        _DEBIT,
        [e.event_id for e in events],
        [e.account_id for e in events],
        # As text: asyncpg encodes a Decimal several times slower than a string.
        [str(e.amount) for e in events],
        [e.occurred_at for e in events],
        [e.kind for e in events],
        [e.currency for e in events],
        sorted({e.account_id for e in events}),
    )
    accounts: dict[str, asyncpg.Record] = {}
    invalid: list[Incoming] = []
    unclaimed: list[Incoming] = []
    for row in rows:
        if row["event_id"] is None:
            accounts[row["id"]] = row
        elif row["valid"]:
            unclaimed.append(candidates[row["event_id"]])
        else:
            invalid.append(candidates[row["event_id"]])

    refused: dict[str, str] = {}  # event id -> why, for events that never reached the ledger
    for item in invalid:
        ev = item.event
        account = accounts.get(ev.account_id)
        if account is None:
            reason = f"unknown account {ev.account_id!r}"
        else:
            reason = f"currency {ev.currency} does not match the account's {account['currency']}"
        refused[ev.event_id] = reason
        result.rejections.append(reject(item, reason))
    for item in repeats:
        first = candidates[item.event.event_id]
        if item.event.event_id in refused and _same_debit(first, item):
            result.rejections.append(reject(item, refused[item.event.event_id]))
        else:
            _duplicate(first, item, result)
    if unclaimed:
        await _classify_existing(conn, unclaimed, result)

    inserted = candidates.keys() - refused.keys() - {i.event.event_id for i in unclaimed}
    result.applied |= inserted
    balances = {acc_id: row["balance"] for acc_id, row in accounts.items()}
    for event_id in inserted:
        ev = candidates[event_id].event
        balances[ev.account_id] -= ev.amount
    moved = sorted(acc_id for acc_id, row in accounts.items() if row["new_balance"] is not None)
    for account_id in moved:  # the row locks make a difference impossible: checked all the same
        if accounts[account_id]["new_balance"] != balances[account_id]:
            raise RuntimeError(
                f"balance drift on {account_id}: {accounts[account_id]['new_balance']}"
            )

    starts: list[RunStart] = []
    for account_id in moved:
        account = accounts[account_id]
        await _announce_low_balance(conn, account, balances[account_id])
        decision = decide_recharge(
            snapshot(account, balance=balances[account_id]),
            now=account["db_now"],
            retry_min_interval=config.retry_min_interval,
        )
        if isinstance(decision, StartRecharge):
            starts.append(auto_start(account, decision, config))
    # All of the group's runs in two statements: forty accounts crossing T together are
    # published as soon as this commits, not after 120 round trips.
    result.runs_started.update(await start_runs(conn, starts))
    for account_id in moved:
        account = accounts[account_id]
        if balances[account_id] <= 0 and account["status"] == "active":
            # Prepaid: with auto-recharge off and nothing in flight, the debit that takes the
            # balance to 0 or below suspends the account (the call itself is still recorded).
            await enforce_prepaid(
                conn,
                account,
                balance=balances[account_id],
                auto_run_in_flight=account["auto_run_in_flight"]
                or account_id in result.runs_started,
            )


async def _announce_low_balance(
    conn: asyncpg.Connection[Any], account: asyncpg.Record, balance: Any
) -> None:
    # Decided on the locked row first: an account without an alert, or already below it,
    # costs no statement on the hot path.
    level = account["low_balance_alert"]
    if level is None or account["low_balance_alerted"] or balance >= level:
        return
    if await conn.fetchrow(MARK_LOW_BALANCE_ALERTED, account["id"]) is not None:
        await emit_event(
            conn,
            EVENT_BALANCE_LOW,
            {
                "account_id": account["id"],
                "balance": balance,
                "alert_level": level,
                "currency": account["currency"],
            },
        )


def _same_debit(a: Incoming, b: Incoming) -> bool:
    return (a.event.account_id, a.event.amount) == (b.event.account_id, b.event.amount)


def _duplicate(first: Incoming, again: Incoming, result: DebitResult) -> None:
    b = again.event
    if _same_debit(first, again):
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
