"""The recharge policy, exhaustively: tiers, intervals, suspension, runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from common.recharge.policy import (
    MAX_TIER,
    AccountSnapshot,
    AccountStatus,
    ArmTier,
    ChargeAgain,
    Hold,
    Reactivate,
    RunCapped,
    RunDone,
    StartRecharge,
    Suspend,
    after_failed_attempt,
    armed_level,
    decide_recharge,
    next_run_step,
    prepaid_status,
    resets_ladder,
    should_reactivate,
    single_charge_amount,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
INTERVAL = timedelta(minutes=30)
money = st.decimals(
    min_value=Decimal("-1000"),
    max_value=Decimal("100000"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
)
positive = st.decimals(
    min_value=Decimal("0.01"),
    max_value=Decimal("10000"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
)
tiers = st.integers(min_value=0, max_value=MAX_TIER)
ages = st.integers(min_value=0, max_value=7200).map(lambda s: timedelta(seconds=s))


def snap(
    balance: Decimal,
    t: Decimal = Decimal(100),
    tier: int = 0,
    *,
    since_failure: timedelta | None = None,
    enabled: bool = True,
    status: AccountStatus = "active",
    in_flight: bool = False,
) -> AccountSnapshot:
    last = None if tier == 0 else NOW - (since_failure if since_failure is not None else INTERVAL)
    return AccountSnapshot(
        balance,
        status,
        enabled,
        t,
        Decimal(20),
        tier,
        last,
        in_flight,
    )


def decide(s: AccountSnapshot) -> StartRecharge | Hold:
    return decide_recharge(s, now=NOW, retry_min_interval=INTERVAL)


@given(money, positive, tiers, ages)
def test_fires_exactly_when_the_rules_say(
    balance: Decimal, t: Decimal, tier: int, age: timedelta
) -> None:
    decision = decide(snap(balance, t, tier, since_failure=age))
    level = armed_level(t, tier)
    expected = balance < t if tier == 0 else balance <= level and age >= INTERVAL
    assert isinstance(decision, StartRecharge) == expected
    if expected:
        assert decision == StartRecharge(tier=tier, level=level)


@given(money, positive, tiers, ages)
def test_waiting_only_on_the_interval_says_when(
    balance: Decimal, t: Decimal, tier: int, age: timedelta
) -> None:
    assume(tier > 0 and balance <= armed_level(t, tier) and age < INTERVAL)
    decision = decide(snap(balance, t, tier, since_failure=age))
    assert decision == Hold("interval", retry_at=NOW - age + INTERVAL)


@given(money, positive, tiers)
def test_never_fires_when_disabled_suspended_or_in_flight(
    balance: Decimal, t: Decimal, tier: int
) -> None:
    assert decide(snap(balance, t, tier, enabled=False)) == Hold("disabled")
    assert decide(snap(balance, t, tier, status="suspended")) == Hold("suspended")
    assert decide(snap(balance, t, tier, in_flight=True)) == Hold("in_flight")


def test_tier_zero_is_strictly_below_threshold_and_tiers_are_at_or_below() -> None:
    assert decide(snap(Decimal(100))) == Hold("above_threshold")
    assert isinstance(decide(snap(Decimal("99.99"))), StartRecharge)
    assert isinstance(decide(snap(Decimal(75), tier=1)), StartRecharge)
    assert decide(snap(Decimal("75.01"), tier=1)) == Hold("above_armed_level")
    assert isinstance(decide(snap(Decimal(0), tier=4)), StartRecharge)
    assert decide(snap(Decimal("0.01"), tier=4)) == Hold("above_armed_level")


def test_levels_are_75_50_25_0_percent() -> None:
    assert [armed_level(Decimal(100), t) for t in range(5)] == [100, 75, 50, 25, 0]
    with pytest.raises(ValueError):
        armed_level(Decimal(100), 5)


@given(tiers, money, positive)
def test_failure_arms_the_next_tier_or_suspends_at_zero(
    tier: int, balance: Decimal, t: Decimal
) -> None:
    decision = after_failed_attempt(tier=tier, balance=balance, balance_amount=t)
    if tier < MAX_TIER:
        assert decision == ArmTier(tier + 1, armed_level(t, tier + 1))
    elif balance <= 0:
        assert decision == Suspend()
    else:
        assert decision == ArmTier(MAX_TIER, Decimal(0))


def test_a_declining_card_walks_the_whole_ladder_then_suspends() -> None:
    """Balance drains steadily; every attempt fails: < T, 75, 50, 25, 0 %, then suspension."""
    balance, tier, last_failure = Decimal(100), 0, None
    attempts: list[Decimal] = []
    clock = NOW
    suspended = False
    while not suspended and balance > -50:
        balance -= 1
        clock += INTERVAL  # debits are spread out: the interval never holds it back here
        state = AccountSnapshot(
            balance, "active", True, Decimal(100), Decimal(20), tier, last_failure, False
        )
        decision = decide_recharge(state, now=clock, retry_min_interval=INTERVAL)
        if isinstance(decision, StartRecharge):
            attempts.append(balance)
            outcome = after_failed_attempt(tier=tier, balance=balance, balance_amount=Decimal(100))
            if isinstance(outcome, Suspend):
                suspended = True
            else:
                tier, last_failure = outcome.tier, clock
    assert attempts == [99, 75, 50, 25, 0]
    assert suspended


@given(st.sampled_from(["active", "suspended"]), money)
def test_reactivation_only_for_suspended_accounts_above_zero(status: str, balance: Decimal) -> None:
    assert should_reactivate(status, balance) == (status == "suspended" and balance > 0)  # type: ignore[arg-type]


def run_to_end(
    balance: Decimal,
    t: Decimal,
    r: Decimal,
    *,
    mode: str = "repeat",
    cap: int = 10,
    max_amount: Decimal = Decimal(10000),
) -> tuple[list[Decimal], str]:
    charges: list[Decimal] = []
    while True:
        step = next_run_step(
            balance=balance,
            target=t,
            recharge_amount=r,
            charges_made=len(charges),
            max_charges=cap,
            mode=mode,  # type: ignore[arg-type]
            max_amount=max_amount,
        )
        if isinstance(step, ChargeAgain):
            charges.append(step.amount)
            balance += step.amount
        else:
            return charges, type(step).__name__


def test_the_faq_example_five_charges_to_110() -> None:
    charges, end = run_to_end(Decimal(10), Decimal(100), Decimal(20))
    assert charges == [20] * 5 and end == "RunDone"
    assert Decimal(10) + sum(charges) == 110


@given(money, positive, positive)
def test_repeat_mode_charges_r_until_at_least_t(balance: Decimal, t: Decimal, r: Decimal) -> None:
    gap = t - balance
    needed = 0 if gap <= 0 else int(gap // r) + (1 if gap % r else 0)
    assume(needed <= 1000)
    charges, end = run_to_end(balance, t, r, cap=1000)
    assert len(charges) == needed and all(c == r for c in charges)
    assert end == "RunDone" and balance + sum(charges) >= t


@given(money, positive, positive, st.integers(min_value=1, max_value=5))
def test_runs_stop_at_the_cap(balance: Decimal, t: Decimal, r: Decimal, cap: int) -> None:
    charges, end = run_to_end(balance, t, r, cap=cap)
    assert len(charges) <= cap
    assert end == ("RunCapped" if balance + sum(charges) < t else "RunDone")


@given(money, positive, positive)
def test_single_mode_is_one_smallest_multiple_reaching_t(
    balance: Decimal, t: Decimal, r: Decimal
) -> None:
    assume(balance < t)
    charges, end = run_to_end(balance, t, r, mode="single", max_amount=Decimal(10**9))
    assert len(charges) == 1 and end == "RunDone"
    (amount,) = charges
    assert amount % r == 0 and balance + amount >= t and balance + amount - r < t


def test_single_mode_stays_within_the_maximum() -> None:
    assert single_charge_amount(Decimal(-500), Decimal(100), Decimal(20), Decimal(100)) == 100
    assert (
        next_run_step(
            balance=Decimal(0),
            target=Decimal(100),
            recharge_amount=Decimal(20),
            charges_made=1,
            max_charges=10,
            mode="single",
            max_amount=Decimal(100),
        )
        == RunDone()
    )
    assert (
        next_run_step(
            balance=Decimal(0),
            target=Decimal(100),
            recharge_amount=Decimal(20),
            charges_made=10,
            max_charges=10,
            mode="repeat",
            max_amount=Decimal(100),
        )
        == RunCapped()
    )


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("in_flight", [True, False])
@pytest.mark.parametrize("reason", ["ladder", "no_auto_recharge"])
@pytest.mark.parametrize("balance", [Decimal("-0.01"), Decimal(0), Decimal("0.01")])
def test_prepaid_status_of_a_suspended_account(
    enabled: bool, in_flight: bool, reason: str, balance: Decimal
) -> None:
    change = prepaid_status(
        status="suspended",
        suspended_reason=reason,  # type: ignore[arg-type]
        balance=balance,
        auto_recharge_enabled=enabled,
        auto_run_in_flight=in_flight,
    )
    # Above 0, or auto-recharge on again when only its being off suspended the account.
    back = balance > 0 or (reason == "no_auto_recharge" and enabled)
    assert change == (Reactivate() if back else None)


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("in_flight", [True, False])
@pytest.mark.parametrize("balance", [Decimal("-0.01"), Decimal(0), Decimal("0.01")])
def test_prepaid_status_of_an_active_account(
    enabled: bool, in_flight: bool, balance: Decimal
) -> None:
    change = prepaid_status(
        status="active",
        suspended_reason=None,
        balance=balance,
        auto_recharge_enabled=enabled,
        auto_run_in_flight=in_flight,
    )
    # No credit: at or below 0 with nothing armed (auto-recharge off) and nothing in flight.
    suspend = balance <= 0 and not enabled and not in_flight
    assert change == (Suspend("no_auto_recharge") if suspend else None)


def test_a_success_resets_the_ladder_only_if_the_account_is_active_after_it() -> None:
    assert resets_ladder(status_after_credit="active") is True
    assert resets_ladder(status_after_credit="suspended") is False


def test_the_ladder_suspends_for_its_own_reason() -> None:
    assert after_failed_attempt(tier=4, balance=Decimal(0), balance_amount=Decimal(100)) == (
        Suspend("ladder")
    )


@pytest.mark.parametrize("tier", [-1, 5])
def test_a_tier_outside_0_to_4_is_refused_with_its_reason(tier: int) -> None:
    with pytest.raises(ValueError) as caught:
        armed_level(Decimal(100), tier)
    assert str(caught.value) == f"tier must be 0..4, got {tier}"


def test_reactivation_needs_a_balance_strictly_above_zero() -> None:
    assert should_reactivate("suspended", Decimal(0)) is False
    assert should_reactivate("suspended", Decimal("-0.01")) is False
    assert should_reactivate("suspended", Decimal("0.01")) is True
    assert should_reactivate("active", Decimal("0.01")) is False


@pytest.mark.parametrize(
    ("max_amount", "charged"),
    [
        # The maximum below 2R: one R, never 2R above the maximum.
        (Decimal(20), Decimal(20)),
        (Decimal(30), Decimal(20)),
        (Decimal("39.99"), Decimal(20)),
        # At 2R exactly, and just above: the largest multiple within it.
        (Decimal(40), Decimal(40)),
        (Decimal("59.99"), Decimal(40)),
        (Decimal(60), Decimal(60)),
        # Above what is needed (T - balance = 100: five R): five R, not the maximum.
        (Decimal(10000), Decimal(100)),
    ],
)
def test_single_mode_charges_the_largest_multiple_within_the_maximum(
    max_amount: Decimal, charged: Decimal
) -> None:
    step = next_run_step(
        balance=Decimal(0),
        target=Decimal(100),
        recharge_amount=Decimal(20),
        charges_made=0,
        max_charges=10,
        mode="single",
        max_amount=max_amount,
    )
    assert step == ChargeAgain(charged)


def test_single_mode_never_exceeds_the_maximum_even_at_decimal_precision() -> None:
    """`max // R` is exact; `max / R` rounds to 28 digits and could round up past the maximum."""
    r = Decimal(2)
    k = 10**27 + 1  # 28 digits: max / R = k + 0.5 rounds (half even) to k + 1
    max_amount = Decimal(2 * k + 1)
    amount = single_charge_amount(Decimal(0), max_amount + 1000, r, max_amount)
    assert amount == Decimal(2 * k)


@given(money, positive, positive, positive)
def test_single_mode_stays_within_any_maximum_of_at_least_r(
    balance: Decimal, t: Decimal, r: Decimal, extra: Decimal
) -> None:
    assume(balance < t)
    max_amount = r + extra
    amount = single_charge_amount(balance, t, r, max_amount)
    assert amount % r == 0 and r <= amount <= max_amount
    assert balance + amount >= t or amount + r > max_amount
