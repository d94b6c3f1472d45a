"""`contacto-billing audit`: the invariants, checked over the whole database.

Each check is one SQL query returning the offending rows; none means the invariant holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis

from common.accounts.ledger import charge_reference_sql
from common.broker.inspect import dead_letters
from common.recharge.policy import MAX_TIER
from config.settings import Settings, get_settings


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    description: str
    sql: str
    params: tuple[str, ...] = ()  # Settings attributes, passed as $1, $2, … in this order


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
        "auto_run_pointer",
        "an account points at its automatic run in flight (auto_run_id), and only at it",
        """
        SELECT a.id AS account_id, a.auto_run_id, r.id AS run_in_flight
        FROM accounts a
        FULL JOIN (SELECT id, account_id FROM recharge_runs
                   WHERE kind = 'auto' AND state IN ('pending', 'failing')) r
            ON r.account_id = a.id
        WHERE a.auto_run_id IS DISTINCT FROM r.id
        """,
    ),
    Check(
        "prepaid_status",
        "prepaid: a suspended account's balance is at or below 0; an active one at or below 0 "
        "has auto-recharge on or an automatic run in flight; only a switched-off "
        f"auto-recharge suspends for that reason; the ladder suspends at tier {MAX_TIER}",
        f"""
        SELECT id AS account_id, status, suspended_reason, balance, auto_recharge_enabled,
               auto_run_id, retry_tier
        FROM accounts
        WHERE (status = 'suspended' AND balance > 0)
           OR (status = 'active' AND balance <= 0 AND NOT auto_recharge_enabled
               AND auto_run_id IS NULL)
           OR (suspended_reason = 'no_auto_recharge' AND auto_recharge_enabled)
           OR (suspended_reason = 'ladder' AND retry_tier <> {MAX_TIER})
        """,
    ),
    Check(
        "account_matches_history",
        "an account's tier and status are what its last account_history row says",
        """
        SELECT a.id AS account_id, a.retry_tier, a.status, a.suspended_reason,
               h.retry_tier AS history_tier, h.status AS history_status,
               h.suspended_reason AS history_reason, h.id AS history_id
        FROM accounts a
        LEFT JOIN LATERAL (SELECT * FROM account_history x WHERE x.account_id = a.id
                           ORDER BY x.id DESC LIMIT 1) h ON true
        WHERE (a.retry_tier, a.status, a.suspended_reason)
              IS DISTINCT FROM (coalesce(h.retry_tier, 0), coalesce(h.status, 'active'),
                                h.suspended_reason)
        """,
    ),
    Check(
        "history_justified",
        "every ladder step has its cause: a tier is armed one step at a time by a failed "
        "automatic charge, reset by a succeeded charge; a prepaid suspension had auto-recharge "
        "off and a balance at or below 0",
        f"""
        WITH h AS (
            SELECT h.*, lag(h.retry_tier, 1, 0::smallint)
                            OVER (PARTITION BY h.account_id ORDER BY h.id) AS tier_before
            FROM account_history h
        )
        SELECT h.account_id, h.id AS history_id, h.cause, h.tier_before, h.retry_tier,
               h.balance, h.auto_recharge, c.status AS charge_status, r.kind AS run_kind
        FROM h
        LEFT JOIN charges c ON c.id = h.charge_id
        LEFT JOIN recharge_runs r ON r.id = c.run_id
        WHERE (h.cause IN ('ladder.armed', 'ladder.suspended')
               AND (c.status IS DISTINCT FROM 'failed' OR r.kind IS DISTINCT FROM 'auto'
                    OR h.retry_tier <> least(h.tier_before + 1, {MAX_TIER})))
           OR (h.cause = 'ladder.reset'
               AND (c.status IS DISTINCT FROM 'succeeded' OR h.retry_tier <> 0))
           OR (h.cause = 'prepaid.suspended' AND (h.auto_recharge OR h.balance > 0))
        """,
    ),
    Check(
        "recharge_amounts_within_limits",
        "every enabled auto-recharge can be charged under today's limits (MIN/MAX_RECHARGE_AMOUNT "
        "and the account's maximum): otherwise each attempt fails as recharge_amount_not_allowed",
        """
        SELECT id AS account_id, recharge_amount, max_recharge_amount
        FROM accounts
        WHERE auto_recharge_enabled
          AND (recharge_amount < $1::numeric
               OR recharge_amount > coalesce(max_recharge_amount, $2::numeric))
        """,
        params=("min_recharge_amount", "max_recharge_amount"),
    ),
    Check(
        "runs_making_progress",
        "no run pending or failing without progress for longer than CONTACTO_STUCK_RUN_AFTER_S "
        "(a dead-lettered or lost message? `dlq list`)",
        """
        SELECT r.id AS run_id, r.account_id, r.kind, r.state, c.id AS charge_id,
               c.idempotency_key, c.gateway_calls,
               greatest(r.created_at, c.updated_at) AS last_progress_at
        FROM recharge_runs r
        LEFT JOIN LATERAL (SELECT * FROM charges x WHERE x.run_id = r.id
                           ORDER BY x.seq DESC LIMIT 1) c ON true
        WHERE r.state IN ('pending', 'failing')
          AND greatest(r.created_at, c.updated_at) < now() - make_interval(secs => $1)
        """,
        params=("stuck_run_after_s",),
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


def dead_letters_check(
    client: redis.Redis, settings: Settings, limit: int = 100, *, now_ms: int | None = None
) -> CheckResult:
    """From Redis, not the database: dead letters older than CONTACTO_DEAD_LETTER_WARN_AFTER_S.
    Each is work not done (a usage message is a debit not made; a run_recharge, a run left
    pending) and dramatiq deletes it after CONTACTO_DEAD_MESSAGE_TTL_DAYS: fix the cause and
    `dlq requeue` it, or `dlq purge` it knowingly."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    warn_after_ms = settings.dead_letter_warn_after_s * 1000
    old = [
        d
        for d in dead_letters(client, settings.broker_namespace)
        if now - d.died_at_ms > warn_after_ms
    ]
    return CheckResult(
        "dead_letters_handled",
        f"no dead letter older than {settings.dead_letter_warn_after_s:g} s: each is work not "
        f"done, deleted after {settings.dead_message_ttl_days:g} days (`dlq list`)",
        [
            {
                "queue": d.queue,
                "message_id": d.message_id,
                "actor": d.actor,
                "died_at": datetime.fromtimestamp(d.died_at_ms / 1000, UTC),
                "age_s": round((now - d.died_at_ms) / 1000),
            }
            for d in old[:limit]
        ],
    )


async def run_audit(
    conn: asyncpg.Connection[Any], limit: int = 100, settings: Settings | None = None
) -> list[CheckResult]:
    settings = settings or get_settings()
    results = []
    # One snapshot for all checks: a busy system cannot make two checks disagree.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for check in CHECKS:
            args = [getattr(settings, name) for name in check.params]
            rows = await conn.fetch(f"SELECT * FROM ({check.sql}) q LIMIT {int(limit)}", *args)
            results.append(CheckResult(check.name, check.description, [dict(r) for r in rows]))
    return results
