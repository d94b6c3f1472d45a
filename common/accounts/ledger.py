"""The append-only ledger: every balance change is one row, written with the balance it moved.

A row is unique per `(kind, reference)`, so a charge is credited once and a support reference
once, however many times the transaction that writes it is retried or redelivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

import asyncpg

from common.accounts.status import reactivate
from common.accounts.store import CREDIT
from common.recharge.policy import AccountStatus, should_reactivate

CreditKind = Literal["recharge", "credit"]

# The ledger reference of a charge's credit. SQL builds the same text where it joins charges
# to their credits (the audit, the demo's timeline): CHARGE_REFERENCE_SQL, from the same prefix.
CHARGE_REFERENCE_PREFIX: Final = "charge-"


def charge_reference(charge_id: int) -> str:
    return f"{CHARGE_REFERENCE_PREFIX}{charge_id}"


def charge_reference_sql(charge_id_column: str) -> str:
    """The same reference as an SQL expression over a charge id column (e.g. `c.id`)."""
    return f"'{CHARGE_REFERENCE_PREFIX}' || {charge_id_column}"


@dataclass(frozen=True, slots=True)
class Credited:
    balance: Decimal
    status: AccountStatus  # after the credit: a balance above 0 reactivates
    # The locked account row as the credit left it, None when the credit changed it further
    # (a reactivation): then whoever needs it reads it again.
    account_after: asyncpg.Record | None


async def apply_credit(
    conn: asyncpg.Connection[Any],
    account: asyncpg.Record,
    amount: Decimal,
    *,
    kind: CreditKind,
    reference: str,
    memo: str | None,
    charge_id: int | None = None,
) -> Credited | None:
    """Credit a locked account once per (kind, reference), re-arm its low-balance alert when the
    credit takes it back above the level, reactivate it if it comes back above zero. None when
    that reference was already credited."""
    after = await conn.fetchrow(CREDIT, account["id"], amount, kind, reference, memo)
    if after is None:
        return None
    balance: Decimal = after["balance"]
    if should_reactivate(account["status"], balance):
        await reactivate(conn, account["id"], balance=balance, charge_id=charge_id)
        return Credited(balance, "active", None)
    return Credited(balance, account["status"], after)
