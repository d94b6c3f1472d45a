"""The exactly-once checks of a phase that writes, and its events per transaction.

Exactly once: one `usage` ledger row and one `usage_events` row per event sent. Exact: every
balance equals the sum of its ledger and the opening balance minus what was sent, to the
micro-unit, and every `balance_after` is the running sum of the account's ledger.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from bench.pipeline.database import OPENING_BALANCE
from bench.pipeline.events import expected_debits
from bench.pipeline.phases import Phase


async def verify(
    db_url: str, run: str, phase: Phase, occurred_at: str
) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    """(all checks passed, the checks' counts, events per transaction)."""
    # In a thread: rebuilding up to 200,000 events takes a while, and the event loop must stay
    # free to act on Ctrl-C meanwhile.
    expected = await asyncio.to_thread(expected_debits, run, phase, occurred_at)
    ids = sorted(expected)
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            """
            SELECT a.id, a.balance, coalesce(sum(l.amount), 0) AS total,
                   count(l.id) FILTER (WHERE l.kind = 'usage') AS usage_rows
            FROM accounts a LEFT JOIN ledger_entries l ON l.account_id = a.id
            WHERE a.id = ANY($1::text[])
            GROUP BY a.id, a.balance
            """,
            ids,
        )
        # Rows written by one transaction share its xmin: the group sizes are the events per
        # transaction, which shows how well the worker's group commit grouped.
        groups = [
            r["n"]
            for r in await conn.fetch(
                "SELECT count(*) AS n FROM usage_events WHERE account_id = ANY($1::text[]) "
                "GROUP BY xmin::text",
                ids,
            )
        ]
        statement_breaks = await conn.fetchval(
            """
            SELECT count(*) FROM (
                SELECT balance_after,
                       sum(amount) OVER (PARTITION BY account_id ORDER BY id) AS running
                FROM ledger_entries WHERE account_id = ANY($1::text[])) t
            WHERE balance_after <> running
            """,
            ids,
        )
        rejected = await conn.fetchval("SELECT count(*) FROM rejected_usage")  # none, ever
        runs = await conn.fetchval(
            "SELECT count(*) FROM recharge_runs WHERE account_id = ANY($1::text[])", ids
        )
    finally:
        await conn.close()
    usage_rows = sum(int(r["usage_rows"]) for r in rows)
    mismatched = [
        r["id"] for r in rows
        if not r["balance"] == r["total"] == OPENING_BALANCE - expected[r["id"]]
    ]  # fmt: skip
    checks = {
        "usage_ledger_rows": usage_rows,
        "usage_events_rows": sum(groups),
        "accounts_checked": len(rows),
        "accounts_wrong_balance": len(mismatched),
        "balance_after_breaks": int(statement_breaks),
        "rejected": int(rejected),
        "recharge_runs": int(runs),
    }
    ok = (
        usage_rows == phase.events
        and sum(groups) == phase.events
        and len(rows) == len(ids)
        and not mismatched
        and statement_breaks == 0
        and rejected == 0
        and runs == 0
    )
    ordered = sorted(groups)
    txns = {
        "count": len(groups),
        "events_per_txn_mean": round(phase.events / len(groups), 2) if groups else None,
        "events_per_txn_p50": ordered[len(ordered) // 2] if ordered else None,
        "events_per_txn_p90": ordered[int(len(ordered) * 0.9)] if ordered else None,
        "events_per_txn_max": ordered[-1] if ordered else None,
    }
    return ok, checks, txns
