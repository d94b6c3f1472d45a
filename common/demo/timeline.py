"""The demo's timeline: what happened, one line each, in time order.

Built from the database (ledger entries with their balance_after, charges with their run's
tier) and from the Redis Stream of domain events. Rows become visible at commit and events
after the relay published them, so lines are held back `LAG` before printing and then
sorted; `pump(flush=True)` prints everything once the caller knows the system is quiet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO, cast

import asyncpg
import redis.asyncio as aioredis

from common.accounts.ledger import charge_reference_sql
from common.money import format_amount
from common.recharge.policy import TIER_FRACTIONS

LAG = timedelta(seconds=0.5)
# Rows are tracked by id; ids are allocated before commit, so a window below the highest
# id seen catches a row that committed late.
ID_WINDOW = 500

_LEDGER = """
SELECT id, account_id, amount, balance_after, kind, reference, memo, created_at
FROM ledger_entries WHERE id > $1 AND kind <> 'recharge' ORDER BY id
"""
_CHARGES = f"""
SELECT c.id, c.account_id, c.amount, c.status, c.failure_code, c.idempotency_key,
       c.updated_at, r.tier, r.kind, r.trigger, r.target_amount, l.balance_after
FROM charges c
JOIN recharge_runs r ON r.id = c.run_id
LEFT JOIN ledger_entries l ON l.kind = 'recharge' AND l.reference = {charge_reference_sql("c.id")}
WHERE c.id > $1 AND c.status IN ('succeeded', 'failed')
ORDER BY c.id
"""


def money(value: Any) -> str:
    return format_amount(Decimal(str(value)))


def tier_label(tier: int, threshold: Decimal | None) -> str:
    if threshold is None:
        return f"tier {tier}"
    if tier == 0:
        return f"tier 0 (balance < {money(threshold)})"
    percent = int(TIER_FRACTIONS[tier] * 100)
    return f"tier {tier} ({percent} %: balance <= {money(threshold * TIER_FRACTIONS[tier])})"


@dataclass(order=True)
class Line:
    at: datetime
    order: int
    account: str = field(compare=False)
    what: str = field(compare=False)
    amount: str = field(compare=False)
    balance: str = field(compare=False)
    detail: str = field(compare=False)
    # What this line changes in the account's view (tier, status), applied when printed.
    effect: dict[str, Any] = field(compare=False, default_factory=dict)


@dataclass
class AccountView:
    tier: int = 0
    status: str = "active"


class Timeline:
    def __init__(
        self,
        conn: asyncpg.Connection[Any],
        redis: aioredis.Redis,
        stream: str,
        out: TextIO,
        *,
        skew: timedelta,
        started_at: datetime,
    ) -> None:
        self.conn = conn
        self.redis = redis
        self.stream = stream
        self.out = out
        self.skew = skew  # database clock minus ours: events and notes carry our clock
        self.started_at = started_at  # database clock
        self.accounts: dict[str, AccountView] = {}
        self._pending: list[Line] = []
        self._seen_ledger: set[int] = set()
        self._seen_charges: set[int] = set()
        self._last_event = "0-0"
        self._order = 0
        self.width = 7

    def db_now(self) -> datetime:
        return datetime.now(UTC) + self.skew

    def _add(self, at: datetime, account: str, what: str, amount: str, balance: str,
             detail: str, effect: dict[str, Any] | None = None) -> None:  # fmt: skip
        self._order += 1
        line = Line(at, self._order, account, what, amount, balance, detail, effect or {})
        self._pending.append(line)

    async def pump(self, *, flush: bool = False) -> None:
        await self._collect()
        horizon = None if flush else self.db_now() - LAG
        self._pending.sort()  # by time: what is ready is a prefix
        ready = [ln for ln in self._pending if horizon is None or ln.at <= horizon]
        self._pending = self._pending[len(ready) :]
        for line in ready:
            self._print(line)

    def note(self, account: str, text: str) -> None:
        """An action of the demo itself (call after pump(flush=True): printed at once)."""
        self._print(Line(self.db_now(), 0, account, "demo", "", "", text))

    def _print(self, line: Line) -> None:
        view = self.accounts.setdefault(line.account, AccountView())
        if line.what in ("credit", "usage"):
            line.detail = line.detail or (
                f"tier {view.tier}" + ("  suspended" if view.status == "suspended" else "")
            )
        offset = (line.at - self.started_at).total_seconds()
        balance = f"balance {line.balance:>7}" if line.balance else " " * 15
        for key, value in line.effect.items():
            setattr(view, key, value)
        text = (
            f"{offset:+8.2f}s  {line.account:<{self.width}}  {line.what:<7} {line.amount:>8}  "
            f"{balance}  {line.detail}"
        ).rstrip()
        print(text, file=self.out, flush=True)

    async def _collect(self) -> None:
        low = max(self._seen_ledger, default=0) - ID_WINDOW
        for row in await self.conn.fetch(_LEDGER, low):
            if row["id"] in self._seen_ledger:
                continue
            self._seen_ledger.add(row["id"])
            sign = "+" if row["amount"] > 0 else ""
            detail = row["memo"] if row["kind"] == "credit" and row["memo"] else ""
            self._add(row["created_at"], row["account_id"], row["kind"],
                      sign + money(row["amount"]), money(row["balance_after"]), detail)  # fmt: skip
        low = max(self._seen_charges, default=0) - ID_WINDOW
        for row in await self.conn.fetch(_CHARGES, low):
            if row["id"] in self._seen_charges:
                continue
            self._seen_charges.add(row["id"])
            effect = {"tier": 0} if row["status"] == "succeeded" else {}
            self._add(row["updated_at"], row["account_id"], "charge", *self._charge(row), effect)
        await self._collect_events()

    def _charge(self, row: asyncpg.Record) -> tuple[str, str, str]:
        key = row["idempotency_key"]
        if row["status"] == "succeeded":
            # The credit commits with the status; without one the audit below would fail.
            after = money(row["balance_after"]) if row["balance_after"] is not None else ""
            return "+" + money(row["amount"]), after, f"succeeded  {key}"
        attempt = (
            tier_label(row["tier"], row["target_amount"]) if row["kind"] == "auto" else "manual"
        )
        return money(row["amount"]), "", f"FAILED {row['failure_code']}  attempt at {attempt}"

    async def _collect_events(self) -> None:
        start = "-" if self._last_event == "0-0" else f"({self._last_event}"
        raw = await self.redis.xrange(self.stream, min=start, count=1000)
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], raw or [])
        for entry_id, fields in entries:
            self._last_event = entry_id.decode()
            kind = fields.get(b"type", b"").decode()
            data = json.loads(fields.get(b"data", b"{}"))
            try:
                at = datetime.fromisoformat(fields.get(b"created_at", b"").decode()) + self.skew
            except ValueError:
                at = self.db_now()
            account = str(data.get("account_id", "-"))
            balance = money(data["balance"]) if data.get("balance") is not None else ""
            detail, effect = _event_detail(kind, data)
            self._add(at, account, "event", "", balance, detail, effect)


def _event_detail(kind: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if kind == "recharge.failed":
        if data.get("suspended"):
            return f"{kind}  the 0 % attempt failed with balance <= 0", {"tier": 4}
        if data.get("next_tier") is not None:
            tier = int(data["next_tier"])
            level = money(data["next_level"])
            return f"{kind}  tier {tier} armed: next attempt when balance <= {level}", {
                "tier": tier
            }
        return f"{kind}  {data.get('kind', '')} recharge {data.get('code', '')}", {}
    if kind == "account.suspended":
        return f"{kind}  SUSPENDED until a new card or a manual recharge", {"status": "suspended"}
    if kind == "account.reactivated":
        return f"{kind}  back above zero", {"status": "active"}
    if kind == "recharge.succeeded":
        return f"{kind}  {data.get('kind', '')} charge {money(data['amount'])}", {}
    if kind == "recharge.capped":
        return f"{kind}  run stopped after {data.get('charges')} charges", {}
    return kind, {}
