"""The retry worker's service (common/recharge/ladder.py): the 75/50/25/0 % ladder, suspension,
the delayed re-check that walks an idle account down the ladder."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from common.recharge.charging import run_to_completion
from common.recharge.config import PolicyConfig
from common.recharge.ladder import recheck_tier, record_failure
from common.recharge.settings import attach_card
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
    assert await recheck_tier(conn, acct, hour) == "interval"
    for expected_tier in (1, 2, 3):
        await conn.execute(
            "UPDATE accounts SET last_failure_at = last_failure_at - "
            "interval '61 minutes' WHERE id = $1",
            acct,
        )
        assert (await recheck_tier(conn, acct, hour)).startswith("started_run_")
        await settle(engine, sim, acct, hour)
        assert (await account_row(conn, acct))["retry_tier"] == expected_tier + 1
    # Tier 4 is armed at 0 % and the balance (4) is above it: no attempt, no suspension.
    await conn.execute(
        "UPDATE accounts SET last_failure_at = last_failure_at - "
        "interval '61 minutes' WHERE id = $1",
        acct,
    )
    assert await recheck_tier(conn, acct, hour) == "above_armed_level"
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
    assert await record_failure(conn, run_id, NO_WAIT) == "armed_tier_1"
    assert await record_failure(conn, run_id, NO_WAIT) == "already_handled"
    assert (await account_row(conn, acct))["retry_tier"] == 1
