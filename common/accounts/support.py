"""Support operations on accounts: create, credit (no card), show."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import asyncpg

from common.accounts import store
from common.accounts.ledger import apply_credit
from common.accounts.store import AccountError, account_id_problem, require_account
from common.money import check_fits_minor_unit, parse_currency
from common.recharge.policy import armed_level

MAX_PAGE_SIZE: Final = 500
MAX_CURSOR: Final = 2**63 - 1  # ids are bigserial


class UnknownAccountError(AccountError):
    """No account has this id (the API answers 404)."""


async def create_account(conn: asyncpg.Connection[Any], account_id: str, currency: str) -> None:
    if problem := account_id_problem(account_id):
        raise AccountError(problem)
    currency = parse_currency(currency)
    if not await store.insert_account(conn, account_id, currency):
        raise AccountError(f"account {account_id!r} already exists")


async def credit_account(
    conn: asyncpg.Connection[Any],
    account_id: str,
    amount: Decimal,
    reason: str,
    reference: str | None = None,
) -> tuple[Decimal, bool]:
    """Support adjustment (no card). Returns (balance, applied); a repeated `reference` is a
    no-op, so scripts can retry safely."""
    if not reason.strip():
        raise AccountError("a reason is required for a credit")
    reference = reference or f"support-{uuid.uuid4()}"
    async with conn.transaction():
        account = await require_account(conn, account_id)
        # The balance is money the customer can spend: whole cents (or yen), like a recharge.
        check_fits_minor_unit(amount, account["currency"])
        credited = await apply_credit(
            conn, account, amount, kind="credit", reference=reference, memo=reason
        )
        if credited is None:
            return account["balance"], False
        return credited.balance, True


def account_state(row: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's view of an account (`accounts show --json` without its charges, and the
    account API): balance, status, the auto-recharge settings and where the ladder stands."""
    tier = row["retry_tier"]
    level = (
        armed_level(row["balance_amount"], tier)
        if tier > 0 and row["auto_recharge_enabled"] and row["balance_amount"] is not None
        else None
    )
    return {
        "account_id": row["id"],
        "currency": row["currency"],
        "balance": row["balance"],
        "status": row["status"],
        "auto_recharge": {
            "enabled": row["auto_recharge_enabled"],
            "balance_amount": row["balance_amount"],
            "recharge_amount": row["recharge_amount"],
            "mode": row["recharge_mode"],
        },
        "retry_tier": tier,
        "armed_level": level,
    }


def _unknown(account_id: str) -> AccountError:
    return UnknownAccountError(f"unknown account {account_id!r}")


async def show_account_state(conn: asyncpg.Connection[Any], account_id: str) -> dict[str, Any]:
    """`account_state` of one account, read with one lean query (the account API's hot path)."""
    row = (
        None
        if account_id_problem(account_id)
        else await store.fetch_account_state(conn, account_id)
    )
    if row is None:
        raise _unknown(account_id)
    return account_state(row)


async def show_account(conn: asyncpg.Connection[Any], account_id: str) -> dict[str, Any]:
    row = await store.fetch_account(conn, account_id)
    if row is None:
        raise _unknown(account_id)
    charges = await store.fetch_charges(conn, account_id)
    runs = await store.fetch_runs_in_flight(conn, account_id)
    return {
        **account_state(row),
        "last_failure_at": row["last_failure_at"],
        "max_recharge_amount": row["max_recharge_amount"],
        "payment_method": row["payment_method"],
        "suspended_at": row["suspended_at"],
        "ledger_sum": row["ledger_sum"],
        "runs_in_flight": [dict(r) for r in runs],
        "charges": [
            {
                "amount": c["amount"],
                "status": c["status"],
                "idempotency_key": c["idempotency_key"],
                "kind": c["kind"],
                "created_at": c["created_at"],
                "failure_code": c["failure_code"],
            }
            for c in charges
        ],
    }


@dataclass(frozen=True, slots=True)
class Page:
    """Rows in id order after a cursor; `next` is the cursor of the following page, or None
    when this one is the last (fewer rows than asked for)."""

    account_id: str
    items: list[dict[str, Any]]
    next: int | None


async def ledger_page(
    conn: asyncpg.Connection[Any], account_id: str, *, after: int = 0, limit: int = 100
) -> Page:
    """An account's ledger entries with an id above `after`, oldest first."""
    return await _page(conn, store.FETCH_LEDGER_PAGE, _LEDGER_FIELDS, account_id, after, limit)


async def charges_page(
    conn: asyncpg.Connection[Any], account_id: str, *, after: int = 0, limit: int = 100
) -> Page:
    """An account's card charges (automatic and manual runs) with an id above `after`."""
    return await _page(conn, store.FETCH_CHARGES_PAGE, _CHARGE_FIELDS, account_id, after, limit)


_LEDGER_FIELDS = ("id", "kind", "amount", "balance_after", "reference", "memo", "created_at")
_CHARGE_FIELDS = (
    "id", "run_id", "kind", "seq", "amount", "currency", "status", "idempotency_key",
    "failure_code", "failure_message", "created_at", "updated_at",
)  # fmt: skip


async def _page(
    conn: asyncpg.Connection[Any],
    query: str,
    fields: tuple[str, ...],
    account_id: str,
    after: int,
    limit: int,
) -> Page:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise AccountError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    if not 0 <= after <= MAX_CURSOR:
        raise AccountError(f"after must be between 0 and {MAX_CURSOR}")
    rows = (
        None
        if account_id_problem(account_id)
        else await store.fetch_page(conn, query, account_id, after, limit)
    )
    if rows is None:
        raise _unknown(account_id)
    items = [{f: r[f] for f in fields} for r in rows]
    return Page(account_id, items, items[-1]["id"] if len(items) == limit else None)


async def ledger_page_newest(
    conn: asyncpg.Connection[Any], account_id: str, *, before: int = MAX_CURSOR, limit: int = 50
) -> Page:
    """An account's ledger entries with an id below `before`, newest first (the console's
    history); `next` is the cursor of the older page."""
    return await _page(
        conn, store.FETCH_LEDGER_PAGE_NEWEST, _LEDGER_FIELDS, account_id, before, limit
    )


async def charges_page_newest(
    conn: asyncpg.Connection[Any], account_id: str, *, before: int = MAX_CURSOR, limit: int = 50
) -> Page:
    """An account's card charges with an id below `before`, newest first."""
    return await _page(
        conn, store.FETCH_CHARGES_PAGE_NEWEST, _CHARGE_FIELDS, account_id, before, limit
    )


AUTHENTICATION_REQUIRED: Final = "authentication_required"


async def console_view(conn: asyncpg.Connection[Any], account_id: str) -> dict[str, Any]:
    """What the account's owner sees on the console: `account_state`, the card's display
    details, why it is suspended, the alert level, the account's maximum, and a charge waiting
    for the customer to authenticate (the latest charge, when it failed for
    authentication_required). Two lean reads: the console polls it."""
    row = (
        None if account_id_problem(account_id) else await store.fetch_account_row(conn, account_id)
    )
    if row is None:
        raise _unknown(account_id)
    latest = await store.fetch_latest_charge(conn, account_id)
    awaiting = (
        dict(latest)
        if latest is not None
        and latest["status"] == "failed"
        and latest["failure_code"] == AUTHENTICATION_REQUIRED
        else None
    )
    card = (
        {
            "brand": row["card_brand"],
            "last4": row["card_last4"],
            "exp_month": row["card_exp_month"],
            "exp_year": row["card_exp_year"],
        }
        if row["card_brand"] is not None
        else None
    )
    return {
        **account_state(row),
        "payment_method": row["payment_method"],
        "max_recharge_amount": row["max_recharge_amount"],
        "card": card,
        "suspended_reason": row["suspended_reason"],
        "low_balance_alert": row["low_balance_alert"],
        "awaiting_authentication": awaiting,
    }


async def set_low_balance_alert(
    conn: asyncpg.Connection[Any], account_id: str, level: Decimal | None
) -> None:
    """The customer's low-balance alert level (None switches it off); `balance.low` is emitted
    when a debit takes the balance below it (common/usage/debits.py), once per crossing."""
    async with conn.transaction():
        account = await require_account(conn, account_id)
        if level is not None:
            if level <= 0:
                raise AccountError("the alert level must be above 0")
            check_fits_minor_unit(level, account["currency"], field="alert level")
        await conn.execute(store.SET_LOW_BALANCE_ALERT, account_id, level)
