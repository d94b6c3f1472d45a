"""A recharge run, one charge at a time; every step commits a recovery point.

    1. next_step (transaction): resume the run's pending charge, or decide the next one and
       store it, with its idempotency key `recharge-<run>-charge-<n>`, before any call is made.
    2. the gateway is called with that key, outside any transaction. A crash or a transient
       error here leaves the charge pending; the redelivered message finds it in step 1 and
       replays the same key, so the gateway cannot charge twice.
    3. record_outcome (transaction): mark the charge, credit the ledger once (unique on the
       charge), reset the tier; or, on a failed attempt, hand the run to the retry worker.

Lock order everywhere: account row, then run row, then charge row.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from common.accounts.ledger import apply_credit, charge_reference
from common.accounts.store import lock_run
from common.crashpoints import crash_point
from common.db.engine import raw_connection
from common.gateway import (
    ChargeFailed,
    ChargeRequest,
    ChargeResult,
    ChargeSucceeded,
    GatewayConfigError,
    PaymentGateway,
    TransientGatewayError,
)
from common.metrics import metrics
from common.names import (
    ACTOR_RECORD_FAILURE,
    EVENT_RECHARGE_CAPPED,
    EVENT_RECHARGE_SUCCEEDED,
)
from common.outbox.store import emit_event, enqueue_message
from common.recharge.config import ChargeLimits
from common.recharge.limits import LimitError, check_recharge_amount, effective_max
from common.recharge.policy import ChargeAgain, RunCapped, RunDone, RunStep, next_run_step

log = structlog.get_logger(__name__)


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

    def request(self) -> ChargeRequest:
        return ChargeRequest(
            idempotency_key=self.idempotency_key,
            account_id=self.account_id,
            amount=self.amount,
            currency=self.currency,
            customer_id=self.customer_id,
            payment_method=self.payment_method,
            description=f"Contacto recharge {self.run_id}/{self.seq}",
        )


@dataclass(frozen=True, slots=True)
class RunFinished:
    state: str


def idempotency_key(run_id: int, seq: int) -> str:
    return f"recharge-{run_id}-charge-{seq}"


async def next_step(
    conn: asyncpg.Connection[Any], run_id: int, limits: ChargeLimits
) -> PendingCharge | RunFinished:
    async with conn.transaction():
        account, run = await lock_run(conn, run_id)
        if account is None or run is None:
            return RunFinished("missing")
        if run["state"] != "pending":
            return RunFinished(run["state"])  # a duplicate message, or finished meanwhile
        pending = await conn.fetchrow(
            "UPDATE charges SET gateway_calls = gateway_calls + 1, updated_at = now() "
            "WHERE run_id = $1 AND status = 'pending' RETURNING *",
            run_id,
        )
        if pending is not None:
            return _pending(pending, account)
        stats = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded, "
            "coalesce(max(seq), 0) AS last_seq FROM charges WHERE run_id = $1",
            run_id,
        )
        assert stats is not None
        step = _decide(run, account, stats["succeeded"], limits)
        if isinstance(step, RunDone):
            await _finish(conn, run_id, "succeeded")
            return RunFinished("succeeded")
        if isinstance(step, RunCapped):
            await _finish(conn, run_id, "capped")
            await emit_event(
                conn,
                EVENT_RECHARGE_CAPPED,
                {
                    "account_id": account["id"],
                    "run_id": run_id,
                    "balance": account["balance"],
                    "balance_amount": run["target_amount"],
                    "charges": stats["succeeded"],
                },
            )
            return RunFinished("capped")
        check_recharge_amount(
            step.amount,
            account["currency"],
            minimum=limits.minimum,
            global_max=limits.global_max,
            account_max=account["max_recharge_amount"],
        )
        seq = stats["last_seq"] + 1
        # No card on file is a failed attempt like a decline: the ladder, not a dead letter.
        no_card = account["payment_method"] is None
        row = await conn.fetchrow(
            "INSERT INTO charges (run_id, account_id, seq, amount, currency, idempotency_key, "
            "payment_method, status, failure_code, failure_message, gateway_calls) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
            run_id,
            account["id"],
            seq,
            step.amount,
            account["currency"],
            idempotency_key(run_id, seq),
            account["payment_method"],
            "failed" if no_card else "pending",
            "no_payment_method" if no_card else None,
            "no card on file" if no_card else None,
            0 if no_card else 1,
        )
        if no_card:
            await _hand_failure_to_retry_worker(conn, run_id)
            return RunFinished("failing")
        return _pending(row, account)


def _decide(
    run: asyncpg.Record, account: asyncpg.Record, succeeded: int, limits: ChargeLimits
) -> RunStep:
    if run["kind"] == "manual":
        return RunDone() if succeeded >= 1 else ChargeAgain(run["recharge_amount"])
    if not account["auto_recharge_enabled"]:
        return RunDone()  # switched off while the run was queued: stop charging
    return next_run_step(
        balance=account["balance"],
        target=run["target_amount"],
        recharge_amount=run["recharge_amount"],
        charges_made=succeeded,
        max_charges=run["max_charges"],
        mode=run["mode"],
        max_amount=effective_max(limits.global_max, account["max_recharge_amount"]),
    )


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
    )


async def _finish(conn: asyncpg.Connection[Any], run_id: int, state: str) -> None:
    await conn.execute(
        "UPDATE recharge_runs SET state = $2, finished_at = now() WHERE id = $1", run_id, state
    )


async def _hand_failure_to_retry_worker(conn: asyncpg.Connection[Any], run_id: int) -> None:
    # 'failing' keeps the run in flight until the retry worker armed the next tier, so no
    # debit can start another attempt in between.
    await conn.execute("UPDATE recharge_runs SET state = 'failing' WHERE id = $1", run_id)
    await enqueue_message(conn, ACTOR_RECORD_FAILURE, {"run_id": run_id})


async def record_outcome(
    conn: asyncpg.Connection[Any], charge: PendingCharge, result: ChargeResult
) -> str:
    """Apply the gateway's answer once. Returns what happened (for logs)."""
    async with conn.transaction():
        account, run = await lock_run(conn, charge.run_id)
        assert account is not None and run is not None
        status = await conn.fetchval(
            "SELECT status FROM charges WHERE id = $1 FOR UPDATE", charge.charge_id
        )
        if status != "pending":
            return "already_recorded"
        if isinstance(result, ChargeSucceeded):
            await conn.execute(
                "UPDATE charges SET status = 'succeeded', gateway_ref = $2, updated_at = now() "
                "WHERE id = $1",
                charge.charge_id,
                result.gateway_ref,
            )
            balance = await apply_credit(
                conn,
                account,
                charge.amount,
                kind="recharge",
                reference=charge_reference(charge.charge_id),
                memo=charge.idempotency_key,
            )
            await conn.execute(
                "UPDATE accounts SET retry_tier = 0, last_failure_at = NULL "
                "WHERE id = $1 AND retry_tier <> 0",
                account["id"],
            )
            await emit_event(
                conn,
                EVENT_RECHARGE_SUCCEEDED,
                {
                    "account_id": account["id"],
                    "run_id": charge.run_id,
                    "kind": run["kind"],
                    "charge_id": charge.charge_id,
                    "amount": charge.amount,
                    "currency": charge.currency,
                    "balance": balance,
                    "idempotency_key": charge.idempotency_key,
                },
            )
            return "succeeded"
        assert isinstance(result, ChargeFailed)
        await conn.execute(
            "UPDATE charges SET status = 'failed', failure_code = $2, failure_message = $3, "
            "gateway_ref = $4, updated_at = now() WHERE id = $1",
            charge.charge_id,
            result.code,
            result.message[:500],
            result.gateway_ref,
        )
        await _hand_failure_to_retry_worker(conn, charge.run_id)
        return "failed"


async def run_to_completion(
    engine: AsyncEngine,
    gateway: PaymentGateway,
    run_id: int,
    limits: ChargeLimits,
) -> str:
    """Charge until the run is finished; raises what the caller must retry or dead-letter."""
    bound = log.bind(run_id=run_id)
    while True:
        async with raw_connection(engine) as conn:
            try:
                step = await next_step(conn, run_id, limits)
            except LimitError as exc:
                bound.error("recharge.misconfigured", error=str(exc))
                raise
        if isinstance(step, RunFinished):
            bound.info("recharge.run_finished", state=step.state)
            if step.state == "capped":
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
            result = await gateway.charge(step.request())
        except TransientGatewayError as exc:
            charge_log.warning("charge.transient_error", error=str(exc))
            metrics().gateway_errors.labels("transient").inc()
            raise
        except GatewayConfigError as exc:
            charge_log.error("gateway.misconfigured", error=str(exc))
            metrics().gateway_errors.labels("config").inc()
            raise
        crash_point("charge.after_gateway")
        async with raw_connection(engine) as conn:
            outcome = await record_outcome(conn, step, result)
        charge_log.info("charge.recorded", outcome=outcome)
        if outcome != "already_recorded":
            metrics().charges.labels(outcome).inc()
            if outcome == "succeeded":
                metrics().recharges.labels("succeeded").inc()
        crash_point("charge.after_credit")
