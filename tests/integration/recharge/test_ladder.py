"""The retry worker's service (common/recharge/ladder.py): the 75/50/25/0 % ladder, suspension,
the delayed re-check that walks an idle account down the ladder."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from common.gateway.simulated import SimulatedGateway, inject_faults
from common.recharge.charging import RunFinished, next_step, record_outcome, run_to_completion
from common.recharge.config import PolicyConfig
from common.recharge.ladder import (
    AlreadyHandled,
    Armed,
    Held,
    RunStarted,
    recheck_tier,
    record_failure,
)
from common.recharge.manual import request_manual_recharge
from common.recharge.settings import attach_card, set_auto_recharge
from tests.support.factories import create_account, new_id
from tests.support.pipeline import (
    LIMITS,
    NO_WAIT,
    TEST_SETTINGS,
    account_row,
    assert_books_balance,
    charges,
    debit,
    events,
    settle,
)


async def test_a_declining_card_walks_the_ladder_to_suspension_and_a_new_card_revives(
    engine: Any, conn: Any, sim: Any
) -> None:
    acct = new_id()
    await create_account(
        conn,
        acct,
        balance="100",
        threshold="100",
        recharge="20",
        payment_method="pm_card_chargeDeclined",
    )
    seen = []
    for spend in ("10", "20", "30", "30", "20"):  # balance 90, 70, 40, 10, -10
        await debit(engine, acct, spend)
        await settle(engine, sim, acct)
        row = await account_row(conn, acct)
        seen.append((row["balance"], row["retry_tier"], row["status"]))
    assert seen == [
        (90, 1, "active"),
        (70, 2, "active"),
        (40, 3, "active"),
        (10, 4, "active"),
        (-10, 4, "suspended"),
    ]
    attempts = await charges(conn, acct)
    assert [(c["run_tier"], c["status"], c["failure_code"]) for c in attempts] == [
        (tier, "failed", "card_declined") for tier in range(5)
    ]
    kinds = [t for t, _ in await events(conn, acct)]
    assert kinds == ["recharge.failed"] * 5 + ["account.suspended"]
    # Debits are still recorded while suspended, and start no attempt.
    assert (await debit(engine, acct, "5")).runs_started == {}
    # A new card fires an attempt at once, which succeeds: reactivated, tier reset.
    card = await attach_card(conn, sim, acct, "pm_card_visa", TEST_SETTINGS)
    assert card.attempt_run_id is not None
    await settle(engine, sim, acct)
    row = await account_row(conn, acct)
    assert (row["status"], row["retry_tier"], row["last_failure_at"]) == ("active", 0, None)
    assert row["balance"] == 105  # -15 + 6 x 20
    assert "account.reactivated" in [t for t, _ in await events(conn, acct)]
    await assert_books_balance(conn, sim, acct)


async def test_a_big_spend_crossing_several_levels_walks_one_attempt_per_interval(
    engine: Any, conn: Any, sim: Any
) -> None:
    hour = PolicyConfig(retry_min_interval=timedelta(hours=1), run_max_charges=10)
    acct = new_id()
    await create_account(
        conn,
        acct,
        balance="100",
        threshold="100",
        recharge="20",
        payment_method="pm_card_chargeDeclined",
    )
    await debit(engine, acct, "95", hour)  # 5 left: below T, 75, 50 and 25 % at once
    await settle(engine, sim, acct, hour)
    assert len(await charges(conn, acct)) == 1
    # The retry worker was asked to come back when the interval is over.
    recheck = await conn.fetchrow(
        "SELECT deliver_at - created_at AS wait FROM outbox WHERE actor_name = 'recheck_tier' "
        "AND payload::jsonb ->> 'account_id' = $1",
        acct,
    )
    assert timedelta(minutes=59) < recheck["wait"] <= timedelta(hours=1, seconds=5)
    # Nothing fires before the interval, neither by a debit nor by the re-check.
    assert (await debit(engine, acct, "1", hour)).runs_started == {}
    assert await recheck_tier(conn, acct, hour) == Held("interval")
    for expected_tier in (1, 2, 3):
        await conn.execute(
            "UPDATE accounts SET last_failure_at = last_failure_at - "
            "interval '61 minutes' WHERE id = $1",
            acct,
        )
        assert isinstance(await recheck_tier(conn, acct, hour), RunStarted)
        await settle(engine, sim, acct, hour)
        assert (await account_row(conn, acct))["retry_tier"] == expected_tier + 1
    # Tier 4 is armed at 0 % and the balance (4) is above it: no attempt, no suspension.
    await conn.execute(
        "UPDATE accounts SET last_failure_at = last_failure_at - "
        "interval '61 minutes' WHERE id = $1",
        acct,
    )
    assert await recheck_tier(conn, acct, hour) == Held("above_armed_level")
    assert (await account_row(conn, acct))["status"] == "active"
    await debit(engine, acct, "10", hour)  # -6: the 0 % attempt fires, fails: suspended
    await settle(engine, sim, acct, hour)
    assert (await account_row(conn, acct))["status"] == "suspended"
    assert len(await charges(conn, acct)) == 5


async def test_record_failure_is_applied_once(engine: Any, conn: Any, sim: Any) -> None:
    acct = new_id()
    await create_account(
        conn,
        acct,
        balance="100",
        threshold="100",
        recharge="20",
        payment_method="pm_card_chargeDeclined",
    )
    run_id = (await debit(engine, acct, "1")).runs_started[acct]
    await run_to_completion(engine, sim, run_id, LIMITS)
    assert await record_failure(conn, run_id, NO_WAIT) == Armed(1, Decimal(75))
    assert await record_failure(conn, run_id, NO_WAIT) == AlreadyHandled()
    assert (await account_row(conn, acct))["retry_tier"] == 1


async def decline_next(sim: SimulatedGateway) -> None:
    await inject_faults(sim._redis, sim.prefix_for_tests, "decline")  # type: ignore[attr-defined]


async def charge_once(engine: Any, conn: Any, sim: SimulatedGateway, run_id: int) -> None:
    """One charge of the run, as the charge worker would make it, and nothing more."""
    step = await next_step(conn, run_id, LIMITS)
    assert not isinstance(step, RunFinished), step
    await record_outcome(conn, step, await sim.charge(step.request()))


@pytest.mark.parametrize(
    ("tier", "balance", "after_one_charge"),
    [(4, "-45", Decimal("-20.01")), (2, "40", Decimal("64.99"))],
)
async def test_a_failure_after_a_success_in_the_same_run_counts_from_that_success(
    engine: Any, conn: Any, sim: SimulatedGateway, tier: int, balance: str, after_one_charge: Any
) -> None:
    """Regression: the ladder used the tier the run started at. A tier-4 run at -45 charged 25,
    then the card declined, and the account was suspended moments after it was charged; a
    tier-2 run that charged and then failed armed tier 3. One failure since a success: tier 1."""
    acct = new_id()
    await create_account(
        conn, acct, balance=balance, threshold="100", recharge="25", tier=tier,
        payment_method="pm_card_visa",
    )  # fmt: skip
    run_id = (await debit(engine, acct, "0.01")).runs_started[acct]
    await charge_once(engine, conn, sim, run_id)
    await decline_next(sim)
    assert await run_to_completion(engine, sim, run_id, LIMITS) == "failing"
    await record_failure(conn, run_id, NO_WAIT)
    row = await account_row(conn, acct)
    assert (row["status"], row["retry_tier"], row["balance"]) == ("active", 1, after_one_charge)


async def test_a_failure_superseded_by_a_later_successful_manual_recharge_arms_nothing(
    engine: Any, conn: Any, sim: SimulatedGateway
) -> None:
    """Regression: a failed 0 % attempt, then a manual recharge that succeeded before the retry
    worker ran, suspended the account. No failure since the last success: tier 0."""
    acct = new_id()
    await create_account(
        conn, acct, balance="-60", threshold="100", recharge="25", tier=4,
        payment_method="pm_card_visa",
    )  # fmt: skip
    auto_run = (await debit(engine, acct, "0.01")).runs_started[acct]
    await decline_next(sim)
    assert await run_to_completion(engine, sim, auto_run, LIMITS) == "failing"
    manual_run = await request_manual_recharge(conn, acct, Decimal(50), TEST_SETTINGS)
    assert await run_to_completion(engine, sim, manual_run, LIMITS) == "succeeded"
    await record_failure(conn, auto_run, NO_WAIT)
    row = await account_row(conn, acct)
    assert (row["status"], row["retry_tier"], row["balance"]) == ("active", 0, Decimal("-10.01"))


async def test_a_manual_recharge_that_leaves_a_suspended_account_at_or_below_zero_keeps_tier_4(
    engine: Any, conn: Any, sim: SimulatedGateway
) -> None:
    """Regression: the success reset the tier while the account stayed suspended."""
    acct = new_id()
    await create_account(
        conn, acct, balance="-60", threshold="100", recharge="25", tier=4,
        status="suspended", payment_method="pm_card_visa",
    )  # fmt: skip
    run_id = await request_manual_recharge(conn, acct, Decimal(25), TEST_SETTINGS)
    assert await run_to_completion(engine, sim, run_id, LIMITS) == "succeeded"
    row = await account_row(conn, acct)
    assert (row["status"], row["retry_tier"], row["balance"]) == ("suspended", 4, -35)


async def test_switching_auto_recharge_off_stops_the_ladder(
    engine: Any, conn: Any, sim: SimulatedGateway
) -> None:
    """Regression: `auto-recharge --off` only cleared the flag and the ladder tested T, so a
    charge declined after the switch still armed the next tier (and could suspend)."""
    acct = new_id()
    await create_account(
        conn, acct, balance="100", threshold="100", recharge="25",
        payment_method="pm_card_chargeDeclined",
    )  # fmt: skip
    run_id = (await debit(engine, acct, "10")).runs_started[acct]
    step = await next_step(conn, run_id, LIMITS)  # the charge is stored, about to be sent
    assert not isinstance(step, RunFinished)
    await set_auto_recharge(conn, acct, TEST_SETTINGS, balance_amount=None, recharge_amount=None)
    await record_outcome(conn, step, await sim.charge(step.request()))
    await record_failure(conn, run_id, NO_WAIT)
    row = await account_row(conn, acct)
    assert (row["status"], row["retry_tier"], row["last_failure_at"]) == ("active", 0, None)
    assert [t for t, _ in await events(conn, acct)] == ["recharge.failed"]
    rechecks = await conn.fetchval(
        "SELECT count(*) FROM outbox WHERE actor_name = 'recheck_tier' "
        "AND payload::jsonb ->> 'account_id' = $1",
        acct,
    )
    assert rechecks == 0
