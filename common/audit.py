"""`contacto-billing audit`: the invariants, checked over the whole database.

Each check is one SQL query returning the offending rows; none means the invariant holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from common.accounts.ledger import charge_reference_sql
from common.recharge.policy import MAX_TIER


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    description: str
    sql: str


@dataclass(slots=True)
class CheckResult:
    name: str
    description: str
    offending: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.offending


CHECKS: tuple[Check, ...] = (
    Check(
        "balance_equals_ledger",
        "every account's balance equals the sum of its ledger rows",
        """
        SELECT a.id AS account_id, a.balance, coalesce(l.total, 0) AS ledger_sum
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger_entries
                   GROUP BY account_id) l ON l.account_id = a.id
        WHERE a.balance <> coalesce(l.total, 0)
        """,
    ),
    Check(
        "ledger_running_balance",
        "each ledger row's balance_after is the running sum of the account's rows",
        """
        SELECT account_id, id AS entry_id, balance_after, running
        FROM (SELECT account_id, id, balance_after,
                     sum(amount) OVER (PARTITION BY account_id ORDER BY id) AS running
              FROM ledger_entries) t
        WHERE balance_after <> running
        """,
    ),
    Check(
        "rows_name_existing_accounts",
        "every ledger row and usage event belongs to an existing account",
        """
        SELECT 'ledger_entries' AS table_name, l.id::text AS row_id, l.account_id
        FROM ledger_entries l WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = l.account_id)
        UNION ALL
        SELECT 'usage_events', u.event_id, u.account_id
        FROM usage_events u WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = u.account_id)
        """,
    ),
    Check(
        "usage_debited_once",
        "every recorded usage event has exactly one debit, and every debit an event",
        """
        SELECT coalesce(u.event_id, l.reference) AS event_id, u.amount AS event_amount,
               l.amount AS debit_amount
        FROM usage_events u
        FULL JOIN (SELECT reference, sum(amount) AS amount, count(*) AS n
                   FROM ledger_entries WHERE kind = 'usage' GROUP BY reference) l
            ON l.reference = u.event_id
        WHERE u.event_id IS NULL OR l.reference IS NULL OR l.n <> 1 OR l.amount <> -u.amount
        """,
    ),
    Check(
        "charges_credited_once",
        "every succeeded charge is credited exactly once, for its amount; nothing else is",
        f"""
        SELECT c.id AS charge_id, c.account_id, c.status, c.amount, l.n AS credits,
               l.amount AS credited
        FROM charges c
        LEFT JOIN (SELECT reference, count(*) AS n, sum(amount) AS amount
                   FROM ledger_entries WHERE kind = 'recharge' GROUP BY reference) l
            ON l.reference = {charge_reference_sql("c.id")}
        WHERE (c.status = 'succeeded' AND (l.n IS DISTINCT FROM 1 OR l.amount <> c.amount))
           OR (c.status <> 'succeeded' AND l.n IS NOT NULL)
        UNION ALL
        SELECT NULL, l.account_id, 'no such charge', NULL, 1, l.amount
        FROM ledger_entries l
        WHERE l.kind = 'recharge'
          AND NOT EXISTS (SELECT 1 FROM charges c
                          WHERE {charge_reference_sql("c.id")} = l.reference)
        """,
    ),
    Check(
        "one_run_in_flight",
        "at most one automatic and one manual run in flight per account",
        """
        SELECT account_id, kind, count(*) AS in_flight, array_agg(id ORDER BY id) AS run_ids
        FROM recharge_runs WHERE state IN ('pending', 'failing')
        GROUP BY account_id, kind HAVING count(*) > 1
        """,
    ),
    Check(
        "tier_matches_charges",
        "the retry tier equals the failed automatic attempts since the last successful "
        f"charge (at most {MAX_TIER}), and a suspended account is at tier {MAX_TIER}",
        f"""
        WITH last_success AS (
            SELECT account_id, max(id) AS charge_id FROM charges
            WHERE status = 'succeeded' GROUP BY account_id
        ), failures AS (
            SELECT c.account_id, count(*) AS n FROM charges c
            JOIN recharge_runs r ON r.id = c.run_id AND r.kind = 'auto' AND r.state = 'failed'
            LEFT JOIN last_success s ON s.account_id = c.account_id
            WHERE c.status = 'failed' AND c.id > coalesce(s.charge_id, 0)
            GROUP BY c.account_id
        )
        SELECT a.id AS account_id, a.status, a.retry_tier,
               least(coalesce(f.n, 0), {MAX_TIER}) AS expected
        FROM accounts a LEFT JOIN failures f ON f.account_id = a.id
        WHERE NOT EXISTS (SELECT 1 FROM recharge_runs r WHERE r.account_id = a.id
                          AND r.state = 'failing')
          AND (a.retry_tier <> least(coalesce(f.n, 0), {MAX_TIER})
               OR (a.status = 'suspended' AND a.retry_tier <> {MAX_TIER}))
        """,
    ),
    Check(
        "no_stuck_charges",
        "no charge pending at the gateway for more than an hour (dead-lettered message?)",
        """
        SELECT id AS charge_id, account_id, idempotency_key, gateway_calls, updated_at
        FROM charges WHERE status = 'pending' AND updated_at < now() - interval '1 hour'
        """,
    ),
    Check(
        "outbox_drained",
        "no outbox row left unsent for more than 5 minutes (is the relay running?)",
        """
        SELECT id AS outbox_id, destination, target, actor_name, created_at, attempts
        FROM outbox WHERE sent_at IS NULL AND deliver_at < now() - interval '5 minutes'
        ORDER BY id LIMIT 100
        """,
    ),
)


async def run_audit(conn: asyncpg.Connection[Any], limit: int = 100) -> list[CheckResult]:
    results = []
    # One snapshot for all checks: a busy system cannot make two checks disagree.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for check in CHECKS:
            rows = await conn.fetch(f"SELECT * FROM ({check.sql}) q LIMIT {int(limit)}")
            results.append(CheckResult(check.name, check.description, [dict(r) for r in rows]))
    return results
