"""Recharge policy: pure functions that return a decision value. No I/O, no clock reads.

The rules (the billing FAQ; README, "Auto-recharge rules"), with T = Balance Amount and
R = Recharge Amount:

    tier 0  fires when balance <  T            a failure arms tier 1
    tier 1  fires when balance <= 0.75 T       a failure arms tier 2
    tier 2  fires when balance <= 0.50 T       a failure arms tier 3
    tier 3  fires when balance <= 0.25 T       a failure arms tier 4
    tier 4  fires when balance <= 0            a failure suspends if balance <= 0

Tiers 1..4 also wait `retry_min_interval` after the last failure. Each tier is one attempt:
a big spend that crosses several levels at once walks the ladder one attempt per interval,
never several attempts at once. The tier a failure is counted from is the account's, read
under its lock: a successful charge resets it to 0, so the next tier counts the failures since
the last successful charge, never the tier a run happened to start at. A successful charge
that leaves the account suspended (balance still <= 0) does not reset it: suspended by the
ladder means tier 4.

Prepaid means no credit (`prepaid_status`): an account whose balance is <= 0 and that has no
automatic recharge in flight or armed is suspended. With auto-recharge on, the ladder is armed
until its 0 % attempt failed, and only that failure suspends (`after_failed_attempt`); with
auto-recharge off, nothing is armed, so a balance <= 0 suspends at once. A suspended account
comes back when its balance is above 0, or, if only the switched-off auto-recharge suspended
it, when auto-recharge is switched on again (the ladder is armed again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final, Literal

MAX_TIER: Final = 4
TIER_FRACTIONS: Final = {
    0: Decimal(1),
    1: Decimal("0.75"),
    2: Decimal("0.50"),
    3: Decimal("0.25"),
    4: Decimal(0),
}

AccountStatus = Literal["active", "suspended"]
SuspendedReason = Literal["ladder", "no_auto_recharge"]
RechargeMode = Literal["repeat", "single"]


# Not frozen: one is built per account per debit transaction, and a frozen dataclass's
# __init__ costs several times a plain one. The policy never mutates it.
@dataclass(slots=True)
class AccountSnapshot:
    """What the policy needs to know about an account, read under the account's row lock."""

    balance: Decimal
    status: AccountStatus
    auto_recharge_enabled: bool
    balance_amount: Decimal | None  # T
    recharge_amount: Decimal | None  # R
    retry_tier: int
    last_failure_at: datetime | None
    auto_run_in_flight: bool


@dataclass(frozen=True, slots=True)
class StartRecharge:
    tier: int
    level: Decimal  # the armed level that was crossed (T itself at tier 0)


HoldReason = Literal[
    "disabled", "in_flight", "suspended", "above_threshold", "above_armed_level", "interval"
]


@dataclass(frozen=True, slots=True)
class Hold:
    reason: HoldReason
    retry_at: datetime | None = None  # set when only the retry interval stands in the way


RechargeDecision = StartRecharge | Hold

# Most debits end in one of these: shared instances, since a Hold is immutable.
_DISABLED = Hold("disabled")
_SUSPENDED = Hold("suspended")
_IN_FLIGHT = Hold("in_flight")
_ABOVE_THRESHOLD = Hold("above_threshold")
_ABOVE_ARMED_LEVEL = Hold("above_armed_level")


def armed_level(balance_amount: Decimal, tier: int) -> Decimal:
    if not 0 <= tier <= MAX_TIER:
        raise ValueError(f"tier must be 0..{MAX_TIER}, got {tier}")
    return balance_amount * TIER_FRACTIONS[tier]


def decide_recharge(
    account: AccountSnapshot, *, now: datetime, retry_min_interval: timedelta
) -> RechargeDecision:
    """Must an automatic recharge start now?"""
    if not account.auto_recharge_enabled or account.balance_amount is None:
        return _DISABLED
    if account.status == "suspended":
        # Only a new card or a manual recharge brings a suspended account back.
        return _SUSPENDED
    if account.auto_run_in_flight:
        return _IN_FLIGHT
    tier = account.retry_tier
    level = armed_level(account.balance_amount, tier)
    if tier == 0:
        if account.balance < level:
            return StartRecharge(tier=0, level=level)
        return _ABOVE_THRESHOLD
    if account.balance > level:
        return _ABOVE_ARMED_LEVEL
    if account.last_failure_at is not None:
        due = account.last_failure_at + retry_min_interval
        if now < due:
            return Hold("interval", retry_at=due)
    return StartRecharge(tier=tier, level=level)


@dataclass(frozen=True, slots=True)
class ArmTier:
    tier: int
    level: Decimal


@dataclass(frozen=True, slots=True)
class Suspend:
    reason: SuspendedReason = "ladder"


FailureDecision = ArmTier | Suspend


def after_failed_attempt(
    *, tier: int, balance: Decimal, balance_amount: Decimal
) -> FailureDecision:
    """What a failed automatic attempt at `tier` leads to."""
    if tier < MAX_TIER:
        return ArmTier(tier=tier + 1, level=armed_level(balance_amount, tier + 1))
    if balance <= 0:
        return Suspend()
    # The 0 % attempt failed while money was still there: stay armed at 0.
    return ArmTier(tier=MAX_TIER, level=Decimal(0))


def should_reactivate(status: AccountStatus, balance: Decimal) -> bool:
    return status == "suspended" and balance > 0


def resets_ladder(*, status_after_credit: AccountStatus) -> bool:
    """Does a successful charge reset the tier? Yes, unless the account stays suspended."""
    return status_after_credit == "active"


@dataclass(frozen=True, slots=True)
class Reactivate:
    pass


StatusChange = Suspend | Reactivate


def prepaid_status(
    *,
    status: AccountStatus,
    suspended_reason: SuspendedReason | None,
    balance: Decimal,
    auto_recharge_enabled: bool,
    auto_run_in_flight: bool,
) -> StatusChange | None:
    """The prepaid rule outside the ladder: must the account's status change now?

    The ladder's own suspension (its 0 % attempt failed) is `after_failed_attempt`'s decision;
    this covers everything else: auto-recharge off with nothing in flight and a balance <= 0
    suspends; a balance above 0 reactivates; so does switching auto-recharge back on when
    that alone had suspended the account.
    """
    if status == "suspended":
        if balance > 0:
            return _REACTIVATE
        if suspended_reason == "no_auto_recharge" and auto_recharge_enabled:
            return _REACTIVATE
        return None
    if balance <= 0 and not auto_recharge_enabled and not auto_run_in_flight:
        return _SUSPEND_NO_AUTO
    return None


_REACTIVATE = Reactivate()
_SUSPEND_NO_AUTO = Suspend("no_auto_recharge")


@dataclass(frozen=True, slots=True)
class ChargeAgain:
    amount: Decimal


@dataclass(frozen=True, slots=True)
class RunDone:
    pass


@dataclass(frozen=True, slots=True)
class RunCapped:
    pass


RunStep = ChargeAgain | RunDone | RunCapped


def next_run_step(
    *,
    balance: Decimal,
    target: Decimal,
    recharge_amount: Decimal,
    charges_made: int,
    max_charges: int,
    mode: RechargeMode,
    max_amount: Decimal,
) -> RunStep:
    """After each successful charge of a run (and before the first): charge again, or stop.

    `repeat` charges R until balance >= T (balance 10, T 100, R 20: five charges, final 110).
    `single` charges once: the smallest multiple of R that reaches T, within `max_amount`.
    """
    if balance >= target:
        return RunDone()
    if charges_made >= max_charges:
        return RunCapped()
    if mode == "single":
        if charges_made >= 1:
            return RunDone()
        return ChargeAgain(single_charge_amount(balance, target, recharge_amount, max_amount))
    return ChargeAgain(recharge_amount)


def single_charge_amount(
    balance: Decimal, target: Decimal, recharge_amount: Decimal, max_amount: Decimal
) -> Decimal:
    """Smallest k*R with balance + k*R >= target; the largest multiple within max otherwise."""
    multiples = max(1, ceil_div(target - balance, recharge_amount))
    affordable = max(1, int(max_amount // recharge_amount))
    return recharge_amount * min(multiples, affordable)


def ceil_div(numerator: Decimal, denominator: Decimal) -> int:
    """Exact ceiling of a quotient of Decimals (Decimal's `//` truncates toward zero)."""
    quotient, remainder = divmod(numerator, denominator)
    return int(quotient) + (1 if remainder > 0 else 0)
