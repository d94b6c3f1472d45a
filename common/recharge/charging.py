"""A recharge run, one charge at a time; every step commits a recovery point.

    1. next_step (transaction): resume the run's pending charge, or decide the next one and
       store it, with its idempotency key `recharge-<run>-charge-<n>`, before any call is made.
       A charge that can never be sent (no card on file, an amount the limits now refuse) is
       stored as failed at once: a failed attempt for the ladder, never a run left pending.
    2. the gateway is called with that key, outside any transaction. A crash or a transient
       error here leaves the charge pending; the redelivered message finds it in step 1 and
       replays the same key, so the gateway cannot charge twice.
    3. record_outcome (transaction): mark the charge, credit the ledger once (unique on the
       charge), reset the ladder; or, on a failed attempt, hand the run to the retry worker.
       The charge worker's loop uses record_and_advance: after a success, step 1 for the next
       charge in the same transaction (finish the run, or store its next charge).

Lock order everywhere: account row, then run row, then charge row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import asyncpg
import structlog

from common.accounts.ledger import Credited, apply_credit, charge_reference
from common.accounts.status import CAUSE_RESET, enforce_prepaid, set_tier
from common.accounts.store import lock_account
from common.crashpoints import crash_point
from common.db.hotpool import ConnectionSource, connection
from common.gateway import (
    ChargeFailed,
    ChargeRequest,
    ChargeResult,
    GatewayConfigError,
    PaymentGateway,
    TransientGatewayError,
)
from common.metrics import metrics
from common.names import ACTOR_RECORD_FAILURE, EVENT_RECHARGE_CAPPED, EVENT_RECHARGE_SUCCEEDED
from common.outbox.store import emit_event, enqueue_message
from common.recharge import store
from common.recharge.config import ChargeLimits
from common.recharge.limits import effective_max, recharge_refusal
from common.recharge.policy import (
    ChargeAgain,
    RunCapped,
    RunDone,
    RunStep,
    next_run_step,
    resets_ladder,
)

log = structlog.get_logger(__name__)

# A charge stored as failed before any gateway call: these codes, like a decline, are failed
# attempts for the ladder (the customer's card or settings must change), not our outages.
NO_PAYMENT_METHOD = ("no_payment_method", "no card on file")
AMOUNT_NOT_ALLOWED = "recharge_amount_not_allowed"


class RunState(StrEnum):
    PENDING = "pending"
    FAILING = "failing"  # an attempt failed; the retry worker has not counted it yet
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CAPPED = "capped"
    MISSING = "missing"  # no such run


class ChargeRecorded(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ALREADY_RECORDED = "already_recorded"  # a duplicate delivery got there first


@dataclass(frozen=True, slots=True)
class PendingCharge:
    charge_id: int
    run_id: int
    account_id: str
    seq: int
    amount: Decimal
    currency: str
    idempotency_key: str
    payment_method: str
    customer_id: str | None
    gateway_calls: int
    created_at: datetime

    @property
    def resumed(self) -> bool:
        """An earlier delivery stored this charge and may have sent it: its outcome is unknown."""
        return self.gateway_calls > 1

    def request(self) -> ChargeRequest:
        return ChargeRequest(
            idempotency_key=self.idempotency_key,
            account_id=self.account_id,
            amount=self.amount,
            currency=self.currency,
            customer_id=self.customer_id,
            payment_method=self.payment_method,
            description=f"Contacto recharge {self.run_id}/{self.seq}",
            created_after=self.created_at,
        )


@dataclass(frozen=True, slots=True)
class RunFinished:
    state: RunState


def idempotency_key(run_id: int, seq: int) -> str:
    return f"recharge-{run_id}-charge-{seq}"


async def next_step(
    conn: asyncpg.Connection[Any], run_id: int, limits: ChargeLimits
) -> PendingCharge | RunFinished:
    async with conn.transaction():
        account, run = await store.lock_run(conn, run_id)
        if account is None or run is None:
            return RunFinished(RunState.MISSING)
        return await _advance(conn, account, run, limits)


async def _advance(
    conn: asyncpg.Connection[Any],
    account: asyncpg.Record,
    run: asyncpg.Record,
    limits: ChargeLimits,
    *,
    recorded: asyncpg.Record | None = None,
) -> PendingCharge | RunFinished:
    """The locked run's next step: resume its pending charge, finish it, or store the next
    charge (or, when it can never be sent, its failure). `recorded`: the caller just recorded
    the run's only pending charge (one per run, a unique index) and has the run's charge
    statistics after it (store.MARK_SUCCEEDED)."""
    run_id = run["id"]
    if run["state"] != RunState.PENDING:
        return RunFinished(RunState(run["state"]))  # a duplicate, or finished meanwhile
    stats = recorded
    if stats is None:
        stats = await conn.fetchrow(store.RESUME_PENDING_CHARGE, run_id)
        assert stats is not None
        if stats["id"] is not None:
            return _pending(stats, account)
    step = _decide(run, account, stats["succeeded"], limits)
    if isinstance(step, RunDone | RunCapped):
        return await _finish(conn, run, account, step, stats["succeeded"])
    seq = stats["last_seq"] + 1
    failure = _unsendable(step.amount, account, limits)
    row = await store.insert_charge(
        conn,
        run_id=run_id,
        account_id=account["id"],
        seq=seq,
        amount=step.amount,
        currency=account["currency"],
        idempotency_key=idempotency_key(run_id, seq),
        payment_method=account["payment_method"],
        failure=failure,
    )
    if failure is not None:
        log.warning("charge.unsendable", run_id=run_id, code=failure[0], reason=failure[1])
        await _hand_failure_to_retry_worker(conn, run_id)
        return RunFinished(RunState.FAILING)
    return _pending(row, account)


def _decide(
    run: asyncpg.Record, account: asyncpg.Record, succeeded: int, limits: ChargeLimits
) -> RunStep:
    if run["kind"] == "manual":
        return RunDone() if succeeded >= 1 else ChargeAgain(run["recharge_amount"])
    if not account["auto_recharge_enabled"]:
        return RunDone()  # switched off while the run was in flight: stop charging
    # The settings in force, not those the run started with: T raised meanwhile must be
    # reached now, or the run ends below it and an idle account waits for the next debit.
    return next_run_step(
        balance=account["balance"],
        target=account["balance_amount"],
        recharge_amount=account["recharge_amount"],
        charges_made=succeeded,
        max_charges=run["max_charges"],
        mode=account["recharge_mode"],
        max_amount=effective_max(limits.global_max, account["max_recharge_amount"]),
    )


def _unsendable(
    amount: Decimal, account: asyncpg.Record, limits: ChargeLimits
) -> tuple[str, str] | None:
    """(code, reason) when this charge can never be sent as things stand."""
    if account["payment_method"] is None:
        return NO_PAYMENT_METHOD
    refusal = recharge_refusal(
        amount,
        account["currency"],
        minimum=limits.minimum,
        global_max=limits.global_max,
        account_max=account["max_recharge_amount"],
    )
    return None if refusal is None else (AMOUNT_NOT_ALLOWED, refusal)


async def _finish(
    conn: asyncpg.Connection[Any],
    run: asyncpg.Record,
    account: asyncpg.Record,
    step: RunDone | RunCapped,
    charges_made: int,
) -> RunFinished:
    state = RunState.SUCCEEDED if isinstance(step, RunDone) else RunState.CAPPED
    await store.finish_run(conn, run, state)
    if state is RunState.CAPPED:
        await emit_event(
            conn,
            EVENT_RECHARGE_CAPPED,
            {
                "account_id": account["id"],
                "run_id": run["id"],
                "balance": account["balance"],
                "balance_amount": account["balance_amount"],
                "charges": charges_made,
            },
        )
    if run["kind"] == "auto":
        # Nothing in flight any more: with auto-recharge switched off meanwhile and the balance
        # at or below 0, prepaid means suspended now.
        await enforce_prepaid(conn, account, auto_run_in_flight=False, run_id=run["id"])
    return RunFinished(state)


def _pending(row: asyncpg.Record, account: asyncpg.Record) -> PendingCharge:
    return PendingCharge(
        charge_id=row["id"],
        run_id=row["run_id"],
        account_id=row["account_id"],
        seq=row["seq"],
        amount=row["amount"],
        currency=row["currency"],
        idempotency_key=row["idempotency_key"],
        payment_method=row["payment_method"],
        customer_id=account["gateway_customer_id"],
        gateway_calls=row["gateway_calls"],
        created_at=row["created_at"],
    )


async def _hand_failure_to_retry_worker(conn: asyncpg.Connection[Any], run_id: int) -> None:
    # 'failing' keeps the run in flight until the retry worker counted the failure, so no
    # debit can start another attempt in between.
    await conn.execute(store.MARK_FAILING, run_id)
    await enqueue_message(conn, ACTOR_RECORD_FAILURE, {"run_id": run_id})


async def record_outcome(
    conn: asyncpg.Connection[Any], charge: PendingCharge, result: ChargeResult
) -> ChargeRecorded:
    """Apply the gateway's answer once."""
    async with conn.transaction():
        return (await _record(conn, charge, result)).outcome


@dataclass(frozen=True, slots=True)
class Recorded:
    outcome: ChargeRecorded
    next: PendingCharge | RunFinished | None  # None: not decided here (ask next_step)


async def record_and_advance(
    conn: asyncpg.Connection[Any], charge: PendingCharge, result: ChargeResult, limits: ChargeLimits
) -> Recorded:
    """record_outcome, and after a success the run's next step in the same transaction.

    One transaction (and one commit, one pooled connection) per charge instead of two: a
    charge worker's time per run is mostly statements, and forty accounts crossing their
    threshold at once queue behind it (docs/performance.md, "Latency")."""
    async with conn.transaction():
        applied = await _record(conn, charge, result)
        outcome, run = applied.outcome, applied.run
        if outcome is ChargeRecorded.FAILED:
            return Recorded(outcome, RunFinished(RunState.FAILING))
        if outcome is not ChargeRecorded.SUCCEEDED or run is None:
            return Recorded(outcome, None)
        # The credit changed the account (balance, maybe its tier or status): decide on the row
        # as it is now. The run's row is unchanged since it was locked.
        account = applied.account_after
        if account is None:
            account = await lock_account(conn, charge.account_id)
            assert account is not None
        step = await _advance(conn, account, run, limits, recorded=applied.stats)
        return Recorded(outcome, step)


@dataclass(frozen=True, slots=True)
class _Applied:
    """What _record did: the outcome, the locked run unless it was recorded before, and after a
    success the account row the credit left (None: read it again) and the run's charge
    statistics (store.MARK_SUCCEEDED)."""

    outcome: ChargeRecorded
    run: asyncpg.Record | None = None
    account_after: asyncpg.Record | None = None
    stats: asyncpg.Record | None = None


async def _record(
    conn: asyncpg.Connection[Any], charge: PendingCharge, result: ChargeResult
) -> _Applied:
    """Apply the gateway's answer once, inside the caller's transaction."""
    account, run = await store.lock_run(conn, charge.run_id, account_id=charge.account_id)
    assert account is not None and run is not None
    if isinstance(result, ChargeFailed):
        if not await store.mark_failed(
            conn, charge.charge_id, result.code, result.message, result.gateway_ref
        ):
            return _Applied(ChargeRecorded.ALREADY_RECORDED)
        await _hand_failure_to_retry_worker(conn, charge.run_id)
        return _Applied(ChargeRecorded.FAILED, run)
    stats = await conn.fetchrow(store.MARK_SUCCEEDED, charge.charge_id, result.gateway_ref)
    if stats is None:
        return _Applied(ChargeRecorded.ALREADY_RECORDED)
    credited = await credit_success(
        conn,
        account,
        run,
        charge_id=charge.charge_id,
        amount=charge.amount,
        currency=charge.currency,
        idempotency_key=charge.idempotency_key,
    )
    return _Applied(ChargeRecorded.SUCCEEDED, run, credited.account_after, stats)


async def credit_success(
    conn: asyncpg.Connection[Any],
    account: asyncpg.Record,
    run: asyncpg.Record,
    *,
    charge_id: int,
    amount: Decimal,
    currency: str,
    idempotency_key: str,
) -> Credited:
    """What every succeeded charge does, in the caller's transaction with the account and the run
    locked and the charge already marked succeeded: credit the ledger once (unique on the
    charge), reset the ladder, emit recharge.succeeded. Returns the credit; its account row is
    None when the ladder's reset changed the row after the credit.

    One function for the charge worker's charges and the console's confirmed authentications
    (common/recharge/authentication.py), so that a success means the same thing for both."""
    credited = await apply_credit(
        conn,
        account,
        amount,
        kind="recharge",
        reference=charge_reference(charge_id),
        memo=idempotency_key,
        charge_id=charge_id,
    )
    assert credited is not None, "a charge that just succeeded was never credited"
    if resets_ladder(status_after_credit=credited.status):
        if account["retry_tier"] != 0:
            await set_tier(
                conn,
                account["id"],
                0,
                None,
                cause=CAUSE_RESET,
                run_id=run["id"],
                charge_id=charge_id,
            )
            credited = replace(credited, account_after=None)
        # A failed attempt the retry worker has not counted yet happened before this success:
        # it counts for nothing (failures count since the last success). None can be, when this
        # is the account's automatic run in flight: one at a time (the in-flight index).
        if not (run["kind"] == "auto" and run["state"] == RunState.PENDING):
            await conn.execute(store.SUPERSEDE_FAILING, account["id"])
    await emit_event(
        conn,
        EVENT_RECHARGE_SUCCEEDED,
        {
            "account_id": account["id"],
            "run_id": run["id"],
            "kind": run["kind"],
            "charge_id": charge_id,
            "amount": amount,
            "currency": currency,
            "balance": credited.balance,
            "idempotency_key": idempotency_key,
        },
    )
    return credited


async def _call(gateway: PaymentGateway, charge: PendingCharge) -> ChargeResult:
    """Charge; but first, for a charge an earlier delivery may have sent, look for what that
    call did. Replaying the key is not enough: the gateway forgets keys (Stripe after 24 h), and
    a forgotten key replayed is a second charge."""
    request = charge.request()
    if charge.resumed:
        found = await gateway.find_charge(request)
        if found is not None:
            log.info("charge.found", idempotency_key=charge.idempotency_key)
            return found
    return await gateway.charge(request)


async def run_to_completion(
    source: ConnectionSource,
    gateway: PaymentGateway,
    run_id: int,
    limits: ChargeLimits,
) -> RunState:
    """Charge until the run is finished; raises what the caller must retry or dead-letter."""
    bound = log.bind(run_id=run_id)
    step: PendingCharge | RunFinished | None = None
    while True:
        if step is None:
            async with connection(source) as conn:
                step = await next_step(conn, run_id, limits)
        if isinstance(step, RunFinished):
            bound.info("recharge.run_finished", state=step.state)
            if step.state is RunState.CAPPED:
                metrics().recharges.labels("capped").inc()
            return step.state
        charge_log = bound.bind(
            account_id=step.account_id,
            idempotency_key=step.idempotency_key,
            amount=str(step.amount),
            attempt=step.gateway_calls,
        )
        crash_point("charge.before_gateway")
        try:
            result = await _call(gateway, step)
        except TransientGatewayError as exc:
            charge_log.warning("charge.transient_error", error=str(exc))
            metrics().gateway_errors.labels("transient").inc()
            raise
        except GatewayConfigError as exc:
            charge_log.error("gateway.misconfigured", error=str(exc))
            metrics().gateway_errors.labels("config").inc()
            raise
        crash_point("charge.after_gateway")
        async with connection(source) as conn:
            recorded = await record_and_advance(conn, step, result, limits)
        charge_log.info("charge.recorded", outcome=recorded.outcome)
        if recorded.outcome is not ChargeRecorded.ALREADY_RECORDED:
            metrics().charges.labels(recorded.outcome.value).inc()
            if recorded.outcome is ChargeRecorded.SUCCEEDED:
                metrics().recharges.labels("succeeded").inc()
        crash_point("charge.after_credit")
        step = recorded.next
