"""The usage events a phase sends, and the debits they must add up to.

Everything here is a pure function of (run, phase, index): the parent, which builds the
messages and later checks the balances, and the direct children, which each build their own
share, derive the same events without passing them around.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

from bench.pipeline.phases import Phase


def account_id(phase: str, index: int) -> str:
    return f"{phase}-a{index:05d}"


def amount_of(i: int) -> str:
    """Deterministic amounts from 0.000001 to ~1.0 with six decimals (exact sums to check)."""
    k = (i * 7919) % 999_983 + 1
    return f"{k // 1_000_000}.{k % 1_000_000:06d}"


def event_id(run: str, phase: str, i: int) -> str:
    """Spread over the key space like the upstream's UUIDs (sequential ids would make every
    index insert an append, and the phases' positions in the indexes differ)."""
    digest = hashlib.blake2b(f"{phase}:{i}".encode(), digest_size=12).hexdigest()
    return f"ev-{run}-{digest}"


def make_event(run: str, phase: Phase, i: int, occurred_at: str) -> dict[str, Any]:
    # i * 761 mod n walks every account evenly; consecutive events hit different accounts.
    accounts = max(phase.accounts, 1)
    return {
        "event_id": event_id(run, phase.name, i),
        "account_id": account_id(phase.name, (i * 761) % accounts),
        "amount": amount_of(i),
        "currency": "USD",
        "occurred_at": occurred_at,
        "kind": "voice",
    }


def expected_debits(run: str, phase: Phase, occurred_at: str) -> dict[str, Decimal]:
    """The total each account of the phase must have been debited, exactly."""
    totals: dict[str, Decimal] = {
        account_id(phase.name, j): Decimal(0) for j in range(phase.accounts)
    }
    for i in range(phase.events):
        ev = make_event(run, phase, i, occurred_at)
        totals[ev["account_id"]] += Decimal(ev["amount"])
    return totals
