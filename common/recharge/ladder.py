"""The retry worker's service: count a failed attempt (arm the next tier, or suspend), and
re-check armed tiers so that an idle account still walks the ladder.

The tier a failure is counted from is the account's, read under its lock, not the tier the run
started at: a successful charge (in the same run, or a manual one) resets the ladder, and a
failure that happened before such a success counts for nothing (`ladder_superseded`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg

from common.accounts.status import (
    CAUSE_ARMED,
    CAUSE_LADDER_SUSPENDED,
    enforce_prepaid,
    set_tier,
    suspend,
)
from common.accounts.store import lock_account, snapshot
from common.names import ACTOR_RECHECK_TIER, EVENT_RECHARGE_FAILED
from common.outbox.store import emit_event, enqueue_message
from common.recharge import store
from common.recharge.config import PolicyConfig
from common.recharge.policy import (
    MAX_TIER,
    ArmTier,
    Hold,
    HoldReason,
    StartRecharge,
    after_failed_attempt,
    decide_recharge,
)
from common.recharge.runs import start_auto_run


@dataclass(frozen=True, slots=True)
class AlreadyHandled:
    """A duplicate delivery: the run's failure was counted before."""


@dataclass(frozen=True, slots=True)
class Reported:
    """The failure is reported (event) but moves no tier."""

    why: Literal["manual", "superseded", "auto_recharge_off"]


@dataclass(frozen=True, slots=True)
class Armed:
    tier: int
    level: Decimal


@dataclass(frozen=True, slots=True)
class Suspended:
    newly: bool  # False: the account was already suspended (a new card's attempt failed)


FailureOutcome = AlreadyHandled | Reported | Armed | Suspended


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: int


@dataclass(frozen=True, slots=True)
class Held:
    reason: HoldReason | Literal["unknown_account"]


RecheckOutcome = RunStarted | Held


async def record_failure(
    conn: asyncpg.Connection[Any], run_id: int, config: PolicyConfig
) -> FailureOutcome:
    """Finish a 'failing' run: count its failure on the ladder exactly once."""
    async with conn.transaction():
        account, run = await store.lock_run(conn, run_id)
        if account is None or run is None or run["state"] != "failing":
            return AlreadyHandled()
        charge = await conn.fetchrow(store.LAST_FAILED_CHARGE, run_id)
        assert charge is not None, "a failing run has a failed charge"
        await store.finish_run(conn, run, "failed")
        attempt_tier: int = account["retry_tier"]
        event: dict[str, Any] = {
            "account_id": account["id"],
            "run_id": run_id,
            "kind": run["kind"],
            "charge_id": charge["id"],
            "amount": charge["amount"],
            "idempotency_key": charge["idempotency_key"],
            "code": charge["failure_code"],
            "message": charge["failure_message"],
            "tier": attempt_tier,
            "balance": account["balance"],
        }
        # The ladder belongs to automatic recharges that are still wanted.
        if run["kind"] != "auto":
            await emit_event(conn, EVENT_RECHARGE_FAILED, event)
            return Reported("manual")
        if run["ladder_superseded"]:
            await emit_event(conn, EVENT_RECHARGE_FAILED, {**event, "superseded": True})
            # The run that reset the ladder could not start another while this one was in
            # flight: look again now, or an idle account below T would wait for a debit.
            await enqueue_message(conn, ACTOR_RECHECK_TIER, {"account_id": account["id"]})
            return Reported("superseded")
        if not account["auto_recharge_enabled"]:
            await emit_event(conn, EVENT_RECHARGE_FAILED, event)
            await enforce_prepaid(conn, account, auto_run_in_flight=False, run_id=run_id)
            return Reported("auto_recharge_off")
        decision = after_failed_attempt(
            tier=attempt_tier, balance=account["balance"], balance_amount=account["balance_amount"]
        )
        failed_at: datetime = charge["updated_at"]
        if isinstance(decision, ArmTier):
            await set_tier(
                conn,
                account["id"],
                decision.tier,
                failed_at,
                cause=CAUSE_ARMED,
                run_id=run_id,
                charge_id=charge["id"],
            )
            await enqueue_message(
                conn,
                ACTOR_RECHECK_TIER,
                {"account_id": account["id"]},
                deliver_at=failed_at + config.retry_min_interval,
            )
            await emit_event(
                conn,
                EVENT_RECHARGE_FAILED,
                {**event, "next_tier": decision.tier, "next_level": decision.level},
            )
            return Armed(decision.tier, decision.level)
        await set_tier(
            conn,
            account["id"],
            MAX_TIER,
            failed_at,
            cause=CAUSE_LADDER_SUSPENDED,
            run_id=run_id,
            charge_id=charge["id"],
        )
        await emit_event(
            conn, EVENT_RECHARGE_FAILED, {**event, "next_tier": None, "suspended": True}
        )
        if account["status"] == "suspended":
            return Suspended(newly=False)
        await suspend(
            conn,
            account["id"],
            "ladder",
            balance=account["balance"],
            run_id=run_id,
            charge_id=charge["id"],
        )
        return Suspended(newly=True)


async def recheck_tier(
    conn: asyncpg.Connection[Any], account_id: str, config: PolicyConfig
) -> RecheckOutcome:
    """Fire the armed tier if its level is crossed and the interval has passed."""
    async with conn.transaction():
        account = await lock_account(conn, account_id)
        if account is None:
            return Held("unknown_account")
        decision = decide_recharge(
            snapshot(account), now=account["db_now"], retry_min_interval=config.retry_min_interval
        )
        if isinstance(decision, StartRecharge):
            run_id = await start_auto_run(conn, account, decision, config)
            return RunStarted(run_id) if run_id is not None else Held("in_flight")
        assert isinstance(decision, Hold)
        if decision.reason == "interval" and decision.retry_at is not None:
            await enqueue_message(
                conn, ACTOR_RECHECK_TIER, {"account_id": account_id}, deliver_at=decision.retry_at
            )
        return Held(decision.reason)
