"""Starting a recharge run: the run row and its outbox message, in the caller's transaction, at
most one automatic and one manual run in flight per account (the partial unique index decides
races). An automatic run is also recorded on the account row (`auto_run_id`), which the debit
statement reads from the row it locked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import asyncpg

from common.names import ACTOR_RUN_RECHARGE
from common.outbox.store import enqueue_messages
from common.recharge import store
from common.recharge.config import PolicyConfig
from common.recharge.policy import StartRecharge

RunKind = Literal["auto", "manual"]
# threshold: the balance fell below T; tier: an armed tier's level was crossed; card: a new
# card fired the armed tier; manual: a top-up.
Trigger = Literal["threshold", "tier", "card", "manual"]


@dataclass(frozen=True, slots=True)
class RunStart:
    account_id: str
    kind: RunKind
    trigger: Trigger
    tier: int
    target_amount: Decimal | None
    recharge_amount: Decimal
    mode: str
    max_charges: int


async def start_runs(conn: asyncpg.Connection[Any], starts: Sequence[RunStart]) -> dict[str, int]:
    """Insert pending runs and the messages that make the charge worker run them, two
    statements however many. Returns account id -> run id for the runs started: an account
    with a run of that kind already in flight gets none."""
    if not starts:
        return {}
    rows = await conn.fetch(
        store.INSERT_RUNS,
        [s.account_id for s in starts],
        [s.kind for s in starts],
        [s.trigger for s in starts],
        [s.tier for s in starts],
        [s.target_amount for s in starts],
        [s.recharge_amount for s in starts],
        [s.mode for s in starts],
        [s.max_charges for s in starts],
    )
    await enqueue_messages(conn, ACTOR_RUN_RECHARGE, [{"run_id": r["id"]} for r in rows])
    return {r["account_id"]: r["id"] for r in rows}


async def start_run(conn: asyncpg.Connection[Any], start: RunStart) -> int | None:
    """start_runs for one run: its id, or None when a run of that kind is already in flight."""
    return (await start_runs(conn, [start])).get(start.account_id)


def auto_start(
    account: Mapping[str, Any],
    decision: StartRecharge,
    config: PolicyConfig,
    *,
    trigger: Trigger | None = None,
) -> RunStart:
    """The automatic run `decision` asks for on a locked account row; `trigger` overrides the
    reason the decision implies (a new card fires the armed tier at once)."""
    return RunStart(
        account_id=account["id"],
        kind="auto",
        trigger=trigger or auto_trigger(decision),
        tier=decision.tier,
        target_amount=account["balance_amount"],
        recharge_amount=account["recharge_amount"],
        mode=account["recharge_mode"],
        max_charges=config.run_max_charges,
    )


async def start_auto_run(
    conn: asyncpg.Connection[Any],
    account: Mapping[str, Any],
    decision: StartRecharge,
    config: PolicyConfig,
    *,
    trigger: Trigger | None = None,
) -> int | None:
    """Start the account's automatic run for `decision` (a locked account row)."""
    return await start_run(conn, auto_start(account, decision, config, trigger=trigger))


def auto_trigger(decision: StartRecharge) -> Trigger:
    """Why an automatic run starts: the balance fell below T, or an armed tier's level."""
    return "threshold" if decision.tier == 0 else "tier"
