"""A charge that failed with authentication_required, completed by the customer on the console
(PAYMENT_GATEWAY=stripe): Stripe.js confirms the failed charge's PaymentIntent on-session, with
the bank's 3-D Secure step, and the money it takes is credited here exactly once.

    1. begin: the account's awaiting charge (its latest, failed for authentication_required,
       its gateway_ref a PaymentIntent) is checked against Stripe (same amount and currency,
       our idempotency key) and a `charge_authentications` row is committed BEFORE the client
       secret goes to the browser: from then on Stripe may take the money without telling us.
    2. settle: Stripe is asked (never the browser: its report only says "look now"). Succeeded:
       in one transaction, a manual run finished at once and a succeeded charge keyed
       `authenticate-<failed charge>` (UNIQUE), credited like any charge (charging.credit_success:
       ledger, ladder reset, recharge.succeeded). A second report, or the sweep racing the
       browser, finds the row settled under its lock and credits nothing.
    3. sweep (the relay, beside the reconciler): a confirmation the browser never reported
       (closed, offline) is settled CONTACTO_AUTHENTICATION_SWEEP_AFTER_S after it started, and
       given up after CONTACTO_AUTHENTICATION_GIVE_UP_AFTER_S unconfirmed.

Lock order: account row, then the authentication row, then the new run and charge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from common.accounts.store import lock_account
from common.db.engine import raw_connection
from common.gateway.base import CardRejected, GatewayError
from common.gateway.currencies import to_gateway_amount
from common.gateway.stripe_gateway import IntentState, StripeGateway
from common.metrics import metrics
from common.money import MoneyError
from common.recharge import store
from common.recharge.charging import credit_success

log = structlog.get_logger(__name__)

AUTHENTICATION_REQUIRED: Final = "authentication_required"
# Stripe's states in which the customer can still confirm the intent in the browser:
# requires_action (localstripe's answer to an off-session 3DS card, or a challenge under way),
# requires_payment_method (real Stripe leaves the intent so after its off-session CardError,
# and after a failed challenge; confirmCardPayment with the card confirms it again).
CONFIRMABLE: Final = frozenset(
    {"requires_action", "requires_payment_method", "requires_confirmation"}
)
# Still moving: the browser may be in the middle of the challenge, or the payment processing.
UNDECIDED: Final = frozenset({"requires_action", "requires_confirmation", "processing"})
SWEEP_BATCH: Final = 100


def authenticated_key(charge_id: int) -> str:
    """The idempotency key of the charge that credits a confirmed authentication: one per
    failed charge, UNIQUE in `charges`, so the credit is made once whoever settles first."""
    return f"authenticate-{charge_id}"


class Outcome(StrEnum):
    """What a settled authentication row says (charge_authentications.outcome)."""

    SUCCEEDED = "succeeded"
    NOT_CONFIRMED = "not_confirmed"
    EXPIRED = "expired"


class Refusal(StrEnum):
    """Why a confirmation cannot start."""

    NOTHING_AWAITING = "nothing_awaiting"  # no charge of this account waits for its owner
    NOT_CONFIRMABLE = "not_confirmable"  # no PaymentIntent, or one canceled for good
    MISMATCH = "mismatch"  # the intent is not the charge's (amount, currency, key): ours to see


# --- begin -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """Give these to Stripe.js's confirmCardPayment."""

    charge_id: int
    payment_method: str | None  # the card the failed charge tried: confirmCardPayment's
    client_secret: str = field(repr=False)  # lets the browser confirm the intent: not for logs


@dataclass(frozen=True, slots=True)
class ReadyToSettle:
    """Stripe already took the money (another tab, or a report that never came): settle now."""

    charge_id: int


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Refusal


BeginResult = Started | ReadyToSettle | Refused


async def _awaiting(conn: asyncpg.Connection[Any], account_id: str) -> asyncpg.Record | None:
    charge = await conn.fetchrow(store.LATEST_CHARGE, account_id)
    if (
        charge is None
        or charge["status"] != "failed"
        or charge["failure_code"] != AUTHENTICATION_REQUIRED
    ):
        return None
    return charge


def _matches(intent: IntentState, charge: asyncpg.Record) -> bool:
    """The intent is the one our charge created: same amount and currency, same key when the
    metadata carries one. Anything else would credit an amount nobody charged."""
    try:
        amount = to_gateway_amount(charge["amount"], charge["currency"])
    except MoneyError:
        return False
    return (
        intent.id == charge["gateway_ref"]
        and (intent.amount, intent.currency) == (amount, charge["currency"].lower())
        and intent.idempotency_key in (None, charge["idempotency_key"])
    )


async def begin(
    conn: asyncpg.Connection[Any], gateway: StripeGateway, account_id: str
) -> BeginResult:
    """Start the on-session confirmation of the account's awaiting charge (see the module)."""
    charge = await _awaiting(conn, account_id)
    if charge is None:
        return Refused(Refusal.NOTHING_AWAITING)
    bound = log.bind(account_id=account_id, charge_id=charge["id"])
    ref = charge["gateway_ref"]
    if not isinstance(ref, str) or not ref.startswith("pi_"):
        bound.warning("authentication.no_intent")
        return Refused(Refusal.NOT_CONFIRMABLE)
    try:
        intent = await gateway.retrieve_intent(ref)
    except CardRejected:
        bound.warning("authentication.intent_missing", payment_intent=ref)
        return Refused(Refusal.NOT_CONFIRMABLE)
    if not _matches(intent, charge):
        bound.error("authentication.intent_mismatch", payment_intent=ref)
        return Refused(Refusal.MISMATCH)
    if intent.status not in CONFIRMABLE | {"succeeded", "processing"}:
        bound.info("authentication.not_confirmable", payment_intent=ref, status=intent.status)
        return Refused(Refusal.NOT_CONFIRMABLE)
    # Committed before the secret leaves: the sweep must know of any confirmation that may
    # take the money, whatever becomes of the browser.
    stored = await conn.fetchval(store.START_AUTHENTICATION, charge["id"], account_id, ref)
    if stored is None or intent.status in ("succeeded", "processing"):
        bound.info("authentication.already_paid", payment_intent=ref, status=intent.status)
        return ReadyToSettle(charge["id"])
    bound.info("authentication.started", payment_intent=ref, status=intent.status)
    return Started(
        charge_id=charge["id"],
        payment_method=intent.payment_method or charge["payment_method"],
        client_secret=intent.client_secret,
    )


# --- settle ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credited:
    run_id: int
    charge_id: int  # the new succeeded charge
    amount: Decimal
    currency: str
    balance: Decimal


@dataclass(frozen=True, slots=True)
class AlreadySettled:
    """Credited before (a second report, or the sweep got there first): nothing done now."""

    run_id: int | None


@dataclass(frozen=True, slots=True)
class NotConfirmed:
    """Stripe did not take the money: the bank refused, the customer gave up, or the intent was
    canceled. Nothing credited; the customer can start again."""

    status: str


@dataclass(frozen=True, slots=True)
class StillPending:
    """Stripe has not decided yet (a challenge under way, a payment processing): the sweep
    looks again later."""

    status: str


@dataclass(frozen=True, slots=True)
class NothingStarted:
    """No confirmation of this account's (or by that id) was ever started."""


SettleResult = Credited | AlreadySettled | NotConfirmed | StillPending | NothingStarted | Refused


async def settle_account(
    conn: asyncpg.Connection[Any], gateway: StripeGateway, account_id: str
) -> SettleResult:
    """Settle the confirmation this account started last (the browser reports it done)."""
    row = await conn.fetchrow(store.ACCOUNT_AUTHENTICATION, account_id)
    if row is None:
        return NothingStarted()
    return await _settle(conn, gateway, row)


async def settle(
    conn: asyncpg.Connection[Any], gateway: StripeGateway, charge_id: int
) -> SettleResult:
    """Settle the confirmation of one failed charge (the sweep)."""
    row = await conn.fetchrow(store.AUTHENTICATION, charge_id)
    if row is None:
        return NothingStarted()
    return await _settle(conn, gateway, row)


async def _settle(
    conn: asyncpg.Connection[Any], gateway: StripeGateway, row: asyncpg.Record
) -> SettleResult:
    bound = log.bind(account_id=row["account_id"], charge_id=row["charge_id"])
    if row["outcome"] == Outcome.SUCCEEDED:
        return await _already(conn, row)
    # Outside any transaction: no lock is held across a call to Stripe.
    try:
        intent = await gateway.retrieve_intent(row["payment_intent"])
    except CardRejected:
        bound.error("authentication.intent_missing", payment_intent=row["payment_intent"])
        return Refused(Refusal.NOT_CONFIRMABLE)
    charge = await conn.fetchrow(store.CHARGE, row["charge_id"])
    assert charge is not None  # a foreign key
    if not _matches(intent, charge):
        bound.error("authentication.intent_mismatch", payment_intent=intent.id)
        return Refused(Refusal.MISMATCH)
    if intent.status in UNDECIDED:
        return StillPending(intent.status)
    if intent.status != "succeeded":
        await conn.execute(store.CLOSE_AUTHENTICATION, row["charge_id"], Outcome.NOT_CONFIRMED)
        bound.info("authentication.not_confirmed", payment_intent=intent.id, status=intent.status)
        return NotConfirmed(intent.status)
    result = await _credit(conn, charge, intent)
    if isinstance(result, Credited):
        # Counted like the charge worker's successes: a recharge is a recharge on the dashboards.
        metrics().charges.labels("succeeded").inc()
        metrics().recharges.labels("succeeded").inc()
        bound.info(
            "authentication.credited",
            payment_intent=intent.id,
            run_id=result.run_id,
            credited_charge_id=result.charge_id,
            amount=str(result.amount),
        )
    return result


async def _already(conn: asyncpg.Connection[Any], row: asyncpg.Record) -> AlreadySettled:
    found = await conn.fetchrow(store.CHARGE_BY_KEY, authenticated_key(row["charge_id"]))
    return AlreadySettled(found["run_id"] if found is not None else None)


async def _credit(
    conn: asyncpg.Connection[Any], charge: asyncpg.Record, intent: IntentState
) -> Credited | AlreadySettled:
    """The confirmed payment's charge and credit, once: the authentication row's lock decides
    between racing settlers, and the charge's UNIQUE key would refuse a second one anyway."""
    async with conn.transaction():
        account = await lock_account(conn, charge["account_id"])
        assert account is not None
        row = await conn.fetchrow(store.LOCK_AUTHENTICATION, charge["id"])
        assert row is not None
        if row["outcome"] == Outcome.SUCCEEDED:
            return await _already(conn, row)
        run = await conn.fetchrow(
            store.INSERT_AUTHENTICATED_RUN, account["id"], account["retry_tier"], charge["amount"]
        )
        key = authenticated_key(charge["id"])
        new_charge_id: int = await conn.fetchval(
            store.INSERT_AUTHENTICATED_CHARGE,
            run["id"],
            account["id"],
            charge["amount"],
            charge["currency"],
            key,
            intent.payment_method or charge["payment_method"],
            intent.id,
        )
        credited = await credit_success(
            conn,
            account,
            run,
            charge_id=new_charge_id,
            amount=charge["amount"],
            currency=charge["currency"],
            idempotency_key=key,
        )
        balance = credited.balance
        await conn.execute(
            store.SETTLE_AUTHENTICATION, charge["id"], Outcome.SUCCEEDED, new_charge_id
        )
    return Credited(run["id"], new_charge_id, charge["amount"], charge["currency"], balance)


# --- the sweep ---------------------------------------------------------------------------------


@dataclass(slots=True)
class SweepPass:
    checked: int = 0
    credited: int = 0
    expired: int = 0
    errors: int = 0


async def sweep_once(
    engine: AsyncEngine,
    gateway: StripeGateway,
    *,
    after_s: float,
    give_up_after_s: float,
    batch_size: int = SWEEP_BATCH,
) -> SweepPass:
    """Settle the confirmations no browser reported (the relay runs this on its reconcile
    clock). A row is claimed (stamped) first, so that relays running this at once, or the next
    pass, leave it alone for `after_s`; a gateway error leaves it for a later pass."""
    result = SweepPass()
    async with raw_connection(engine) as conn:
        due = await conn.fetch(
            store.CLAIM_UNSETTLED_AUTHENTICATIONS, after_s, batch_size, give_up_after_s
        )
    for claimed in due:
        result.checked += 1
        bound = log.bind(account_id=claimed["account_id"], charge_id=claimed["charge_id"])
        try:
            async with raw_connection(engine) as conn:
                outcome = await settle(conn, gateway, claimed["charge_id"])
                if isinstance(outcome, Credited):
                    result.credited += 1
                    bound.warning("authentication.swept", run_id=outcome.run_id)
                elif isinstance(outcome, StillPending | Refused) and claimed["overdue"]:
                    await conn.execute(
                        store.CLOSE_AUTHENTICATION, claimed["charge_id"], Outcome.EXPIRED
                    )
                    result.expired += 1
                    bound.info("authentication.expired")
        except GatewayError as exc:
            result.errors += 1
            bound.warning("authentication.sweep_error", error=str(exc))
    return result
