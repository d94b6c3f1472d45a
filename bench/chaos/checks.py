"""The end-of-run checks: each returns a Check with its counts and its violations (empty: the
invariant holds). Read once the pipeline has settled and stopped, from PostgreSQL, the run's
Redis (dead letters) and the simulated gateway's own Redis (what money moved).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import redis

from bench.chaos.load import Event
from common.accounts.ledger import charge_reference
from common.accounts.status import (
    CAUSE_ARMED,
    CAUSE_LADDER_SUSPENDED,
    CAUSE_PREPAID_SUSPENDED,
    CAUSE_REACTIVATED,
    CAUSE_RESET,
)
from common.audit import run_audit
from common.broker.inspect import DeadLetter, dead_letters
from common.names import (
    ACTOR_RECHECK_TIER,
    ACTOR_RECORD_FAILURE,
    ACTOR_RECORD_USAGE,
    ACTOR_RECORD_USAGE_BATCH,
    ACTOR_RUN_RECHARGE,
)
from common.recharge.policy import (
    AccountStatus,
    ArmTier,
    Reactivate,
    Suspend,
    SuspendedReason,
    after_failed_attempt,
    prepaid_status,
    resets_ladder,
    should_reactivate,
)
from config.settings import Settings

MAX_SHOWN = 10  # violations listed per check; the count is always complete


@dataclass
class Check:
    name: str
    what: str
    counts: dict[str, int | str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0

    def violate(self, text: str) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_SHOWN:
            self.violations.append(text)

    @property
    def ok(self) -> bool:
        return self.violation_count == 0


async def events_debited_once(conn: asyncpg.Connection[Any], sent: dict[str, Event]) -> Check:
    check = Check(
        "events_debited_once",
        "every event sent (deduped by event_id) is in usage_events once, with its account and "
        "amount, and has exactly one usage ledger row for -amount; nothing else is",
    )
    recorded = {
        r["event_id"]: r for r in await conn.fetch("SELECT * FROM usage_events")
    }  # fmt: skip
    debits = {
        r["reference"]: r
        for r in await conn.fetch(
            "SELECT reference, count(*) AS n, sum(amount) AS amount FROM ledger_entries "
            "WHERE kind = 'usage' GROUP BY reference"
        )
    }
    missing = [e for e in sent if e not in recorded]
    for event_id in missing:
        check.violate(f"{event_id}: sent, never recorded")
    for event_id, row in recorded.items():
        ev = sent.get(event_id)
        if ev is None:
            check.violate(f"{event_id}: recorded, never sent")
        elif (row["account_id"], row["amount"]) != (ev.account_id, ev.amount):
            check.violate(f"{event_id}: recorded as {row['account_id']} {row['amount']}")
        debit = debits.get(event_id)
        if debit is None or debit["n"] != 1 or debit["amount"] != -row["amount"]:
            n, amount = (debit["n"], debit["amount"]) if debit else (0, 0)
            check.violate(f"{event_id}: {n} usage ledger rows summing to {amount}")
    for reference in debits.keys() - recorded.keys():
        check.violate(f"usage ledger row {reference} has no usage event")
    rejected = await conn.fetch("SELECT event_id, reason FROM rejected_usage")
    for r in rejected:
        check.violate(f"rejected_usage: {r['event_id']}: {r['reason']}")
    check.counts = {
        "sent": len(sent),
        "recorded": len(recorded),
        "missing": len(missing),
        "usage_debits": sum(int(d["n"]) for d in debits.values()),
        "rejected": len(rejected),
    }
    return check


async def balances_equal_ledger(conn: asyncpg.Connection[Any]) -> Check:
    check = Check(
        "balance_equals_ledger",
        "every account's balance is the sum of its ledger rows",
    )
    rows = await conn.fetch(
        "SELECT a.id, a.balance, coalesce(sum(l.amount), 0) AS total FROM accounts a "
        "LEFT JOIN ledger_entries l ON l.account_id = a.id GROUP BY a.id, a.balance"
    )
    for r in rows:
        if r["balance"] != r["total"]:
            check.violate(f"{r['id']}: balance {r['balance']}, ledger {r['total']}")
    check.counts = {"accounts": len(rows)}
    return check


async def charges_credited_once(
    conn: asyncpg.Connection[Any], gateway_charges: list[dict[str, Any]]
) -> Check:
    """The gateway's records are the truth about money: each charge that moved money is
    credited once, for its amount, to its account; every credit has such a charge."""
    check = Check(
        "gateway_charges_credited_once",
        "every charge the simulated gateway executed with success is credited exactly once "
        "(its charge row succeeded, one recharge ledger row for its amount); no credit without "
        "one; no idempotency key moved money twice",
    )
    moved: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in gateway_charges:
        if c["result"] == "succeeded":
            moved[c["idempotency_key"]].append(c)
    charges = {r["idempotency_key"]: r for r in await conn.fetch("SELECT * FROM charges")}
    credits: dict[str, list[Any]] = defaultdict(list)
    for r in await conn.fetch(
        "SELECT account_id, amount, reference FROM ledger_entries WHERE kind = 'recharge'"
    ):
        credits[r["reference"]].append(r)
    for key, executions in moved.items():
        if len(executions) > 1:
            check.violate(f"{key}: money moved {len(executions)} times at the gateway")
        gw = executions[0]
        row = charges.get(key)
        if row is None:
            check.violate(f"{key}: charged {gw['amount']} at the gateway, no charge row")
            continue
        found = credits.get(charge_reference(row["id"]), [])
        if row["status"] != "succeeded":
            check.violate(f"{key}: charged at the gateway, charge row {row['status']}")
        if len(found) != 1 or found[0]["amount"] != Decimal(gw["amount"]):
            amounts = [str(f["amount"]) for f in found]
            check.violate(f"{key}: charged {gw['amount']}, credited {amounts}")
        elif found[0]["account_id"] != gw["account_id"]:
            check.violate(f"{key}: charged {gw['account_id']}, credited {found[0]['account_id']}")
    by_reference = {charge_reference(r["id"]): r for r in charges.values()}
    for reference in credits:
        row = by_reference.get(reference)
        if row is None:
            check.violate(f"credit {reference}: no such charge")
        elif row["idempotency_key"] not in moved:
            check.violate(f"credit {reference}: the gateway moved no money for it")
    statuses = Counter(r["status"] for r in charges.values())
    check.counts = {
        "gateway_calls_executed": len(gateway_charges),
        "gateway_succeeded": len(moved),
        "gateway_declined": sum(1 for c in gateway_charges if c["result"] != "succeeded"),
        "credits": sum(len(v) for v in credits.values()),
        **{f"charges_{k}": v for k, v in sorted(statuses.items())},
    }
    return check


async def suspensions_justified(
    conn: asyncpg.Connection[Any], only: Collection[str] | None = None
) -> Check:
    """Replay each account's account_history through the pure policy: every ladder step, reset,
    suspension and reactivation must be what the policy decides from the state before it.
    `only`: these accounts (a test's, in a shared database); default every account."""
    check = Check(
        "suspensions_justified",
        "each account's history replayed through common/recharge/policy.py: every tier armed, "
        "reset, suspension and reactivation is the policy's decision from the state before it",
    )
    ids = None if only is None else list(only)
    accounts = {
        r["id"]: r
        for r in await conn.fetch(
            "SELECT * FROM accounts WHERE $1::text[] IS NULL OR id = ANY($1::text[])", ids
        )
    }
    rows = await conn.fetch(
        """
        SELECT h.*, c.status AS charge_status, r.kind AS run_kind
        FROM account_history h
        LEFT JOIN charges c ON c.id = h.charge_id
        LEFT JOIN recharge_runs r ON r.id = c.run_id
        WHERE $1::text[] IS NULL OR h.account_id = ANY($1::text[])
        ORDER BY h.account_id, h.id
        """,
        ids,
    )
    history: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        history[r["account_id"]].append(r)
    causes: Counter[str] = Counter()
    for account_id, account in accounts.items():
        tier: int = 0
        status: AccountStatus = "active"
        reason: SuspendedReason | None = None
        t = account["balance_amount"]
        for h in history.get(account_id, []):
            causes[h["cause"]] += 1
            where = f"{account_id} history {h['id']} ({h['cause']})"
            cause = h["cause"]
            if cause in (CAUSE_ARMED, CAUSE_LADDER_SUSPENDED):
                if (h["charge_status"], h["run_kind"]) != ("failed", "auto"):
                    check.violate(f"{where}: no failed automatic charge behind it")
                decision = after_failed_attempt(tier=tier, balance=h["balance"], balance_amount=t)
                expected = (
                    ("armed", decision.tier)
                    if isinstance(decision, ArmTier)
                    else ("suspended", 4)  # Suspend: the ladder ends at its 0 % tier
                )
                got = ("armed" if cause == CAUSE_ARMED else "suspended", h["retry_tier"])
                if got != expected:
                    check.violate(
                        f"{where}: from tier {tier} at balance {h['balance']} the policy says "
                        f"{expected}, history says {got}"
                    )
            elif cause == CAUSE_RESET:
                if h["charge_status"] != "succeeded" or h["retry_tier"] != 0:
                    check.violate(f"{where}: a reset without a succeeded charge")
                if not resets_ladder(status_after_credit=h["status"]):
                    check.violate(f"{where}: the policy keeps the tier of a suspended account")
            elif cause == CAUSE_PREPAID_SUSPENDED:
                change = prepaid_status(
                    status=status,
                    suspended_reason=reason,
                    balance=h["balance"],
                    auto_recharge_enabled=h["auto_recharge"],
                    auto_run_in_flight=False,  # the most lenient reading: not recorded
                )
                if not isinstance(change, Suspend):
                    check.violate(
                        f"{where}: prepaid suspension at balance {h['balance']}, auto-recharge "
                        f"{'on' if h['auto_recharge'] else 'off'}: the policy would not suspend"
                    )
            elif cause == CAUSE_REACTIVATED:
                change = prepaid_status(
                    status=status,
                    suspended_reason=reason,
                    balance=h["balance"],
                    auto_recharge_enabled=h["auto_recharge"],
                    auto_run_in_flight=False,
                )
                if not (should_reactivate(status, h["balance"]) or isinstance(change, Reactivate)):
                    check.violate(f"{where}: reactivated at balance {h['balance']}")
            else:
                check.violate(f"{where}: unknown cause")
            tier, status, reason = h["retry_tier"], h["status"], h["suspended_reason"]
        if (account["retry_tier"], account["status"]) != (tier, status):
            check.violate(
                f"{account_id}: is at tier {account['retry_tier']} {account['status']}, its "
                f"history ends at tier {tier} {status}"
            )
    check.counts = {
        "accounts_replayed": len(accounts),
        "history_rows": len(rows),
        "suspended_now": sum(1 for a in accounts.values() if a["status"] == "suspended"),
        **{c.replace("account.", "").replace(".", "_"): n for c, n in sorted(causes.items())},
    }
    return check


async def audit(conn: asyncpg.Connection[Any], settings: Settings) -> Check:
    """`contacto-billing audit`'s database checks, as support would run them afterwards."""
    check = Check("audit", "`contacto-billing audit`: every database invariant it checks")
    results = await run_audit(conn, settings=settings)
    for r in results:
        for row in r.offending[:3]:
            check.violate(f"{r.name}: {row}")
        check.violation_count += max(0, len(r.offending) - 3)
    check.counts = {"checks": len(results), "failed": sum(1 for r in results if not r.ok)}
    return check


async def dead_letters_explained(
    conn: asyncpg.Connection[Any], client: redis.Redis, namespace: str
) -> Check:
    """A dead letter is explained when the work it carried was done anyway (a redelivered or
    republished copy did it); otherwise it is work not done."""
    check = Check(
        "dead_letters_explained",
        "no dead letter, or each one's work done anyway (its events recorded, its run finished)",
    )
    letters = dead_letters(client, namespace)
    explained = 0
    for d in letters:
        why = await _explain(conn, d)
        if why is None:
            check.violate(f"{d.queue} {d.actor} {d.message_id}: work not done")
        else:
            explained += 1
    check.counts = {"dead_letters": len(letters), "explained": explained}
    return check


async def _explain(conn: asyncpg.Connection[Any], d: DeadLetter) -> str | None:
    kwargs = (d.message or {}).get("kwargs") or {}
    args = (d.message or {}).get("args") or []
    if d.actor == ACTOR_RECORD_USAGE:
        ids = [kwargs.get("event_id")]
    elif d.actor == ACTOR_RECORD_USAGE_BATCH:
        ids = [e.get("event_id") for e in kwargs.get("events", []) if isinstance(e, dict)]
    elif d.actor in (ACTOR_RUN_RECHARGE, ACTOR_RECORD_FAILURE):
        run_id = kwargs.get("run_id", args[0] if args else None)
        state = await conn.fetchval("SELECT state FROM recharge_runs WHERE id = $1", run_id)
        return f"run {run_id} is {state}" if state not in (None, "pending", "failing") else None
    elif d.actor == ACTOR_RECHECK_TIER:
        account_id = kwargs.get("account_id", args[0] if args else None)
        busy = await conn.fetchval(
            "SELECT count(*) FROM recharge_runs WHERE account_id = $1 "
            "AND state IN ('pending', 'failing')",
            account_id,
        )
        # A later debit or re-check looked at the account since: nothing waits on this one.
        return None if busy else f"account {account_id} has no run in flight"
    else:
        return None
    found = await conn.fetchval(
        "SELECT count(*) FROM usage_events WHERE event_id = ANY($1::text[])", ids
    )
    return "its events are recorded" if ids and found == len(ids) else None
