"""The recharge engine in-process against the real PostgreSQL and the Redis-backed simulator:
the FAQ's rules, the ladder, limits, and idempotency of every step."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from common.gateway import GatewayConfigError, TransientGatewayError
from common.gateway.simulated import SimulatedGateway, delete_state, inject_faults
from common.recharge.charging import next_step, record_outcome, run_to_completion
from common.recharge.config import ChargeLimits, PolicyConfig
from common.recharge.ladder import recheck_tier, record_failure
from common.recharge.limits import LimitError
from common.recharge.manual import request_manual_recharge
from common.recharge.settings import attach_card, set_auto_recharge, set_max_recharge
from common.usage.service import apply_submissions
from config.settings import Settings
from tests.support.factories import balance_and_ledger, create_account, event, new_id, submission
from tests.support.pipeline import (
    LIMITS,
    NO_WAIT,
    TEST_SETTINGS,
    account_row,
    charges,
    events,
    settle,
)


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[SimulatedGateway]:
    client = aioredis.Redis.from_url(settings.redis_url)
    prefix = f"test-simgw-{uuid.uuid4().hex[:8]}"
    gw = SimulatedGateway(client, prefix)
    gw.prefix_for_tests = prefix  # type: ignore[attr-defined]
    yield gw
    await delete_state(client, prefix)
    await client.aclose()


async def debit(engine: Any, account: str, amount: str, policy: PolicyConfig = NO_WAIT) -> Any:
    [outcome] = await apply_submissions(engine, policy, [submission(event(account, amount))])
    return outcome


async def assert_books_balance(conn: Any, sim: SimulatedGateway, account: str) -> None:
    """balance == sum(ledger); every succeeded charge credited once, at the gateway once."""
    balance, total, _ = await balance_and_ledger(conn, account)
    assert balance == total
    for c in await charges(conn, account):
        credits = await conn.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE kind = 'recharge' AND reference = $1",
            f"charge-{c['id']}",
        )
        assert credits == (1 if c["status"] == "succeeded" else 0)
        assert await sim.charges_made(c["idempotency_key"]) == (
            1 if c["status"] == "succeeded" else 0
        )


async def test_the_faq_example_literally(engine: Any, conn: Any, sim: Any) -> None:
    """T 100, R 20 (minimum set to 20), one spend of 90: five charges, balance 110."""
    acct = new_id()
    await create_account(
        conn, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    outcome = await debit(engine, acct, "90")
    assert list(outcome.runs_started) == [acct]
    await settle(engine, sim, acct)
    rows = await charges(conn, acct)
    assert [(c["amount"], c["status"]) for c in rows] == [(Decimal(20), "succeeded")] * 5
    assert [c["idempotency_key"] for c in rows] == [
        f"recharge-{rows[0]['run_id']}-charge-{n}" for n in range(1, 6)
    ]
    balance, _, _ = await balance_and_ledger(conn, acct)
    assert balance == 110
    assert [t for t, _ in await events(conn, acct)] == ["recharge.succeeded"] * 5
    await assert_books_balance(conn, sim, acct)


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


async def test_debits_arriving_during_a_run_are_taken_into_account(
    engine: Any, conn: Any, sim: Any
) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    run_id = (await debit(engine, acct, "90")).runs_started[acct]
    step = await next_step(conn, run_id, LIMITS)
    await record_outcome(conn, step, await sim.charge(step.request()))  # type: ignore[union-attr]
    later = await debit(engine, acct, "30")  # 10 + 20 - 30 = 0, while the run is in flight
    assert later.runs_started == {}
    await settle(engine, sim, acct)
    balance, _, _ = await balance_and_ledger(conn, acct)
    assert balance == 100 and len(await charges(conn, acct)) == 6
    await assert_books_balance(conn, sim, acct)


async def test_two_usage_messages_racing_start_one_run(engine: Any, conn: Any) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="100", threshold="100", recharge="20")
    outcomes = await asyncio.gather(
        *(apply_submissions(engine, NO_WAIT, [submission(event(acct, "10"))]) for _ in range(10))
    )
    started = [o.runs_started for [o] in outcomes if o.runs_started]
    assert len(started) == 1
    assert (
        await conn.fetchval("SELECT count(*) FROM recharge_runs WHERE account_id = $1", acct) == 1
    )


async def test_timeouts_and_a_lost_response_replay_the_same_key_and_charge_once(
    engine: Any, conn: Any, sim: Any
) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="90", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    await set_auto_recharge(
        conn, acct, TEST_SETTINGS, balance_amount=Decimal(100), recharge_amount=Decimal(20)
    )
    run_id = await conn.fetchval("SELECT id FROM recharge_runs WHERE account_id = $1", acct)
    await inject_faults(
        sim._redis, sim.prefix_for_tests, "timeout", "rate_limit", "lost_response", "server_error"
    )
    for _ in range(4):  # each transient error is raised for dramatiq to retry the message
        with pytest.raises(TransientGatewayError):
            await run_to_completion(engine, sim, run_id, LIMITS)
    assert await run_to_completion(engine, sim, run_id, LIMITS) == "succeeded"
    [charge] = await charges(conn, acct)
    assert charge["gateway_calls"] == 5 and charge["status"] == "succeeded"
    assert await sim.charges_made(charge["idempotency_key"]) == 1
    assert (await balance_and_ledger(conn, acct))[0] == 110
    await assert_books_balance(conn, sim, acct)


async def test_our_misconfiguration_stops_without_touching_the_tier(
    engine: Any, conn: Any, sim: Any
) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    run_id = (await debit(engine, acct, "90")).runs_started[acct]
    await inject_faults(sim._redis, sim.prefix_for_tests, "config_error")
    with pytest.raises(GatewayConfigError):
        await run_to_completion(engine, sim, run_id, LIMITS)
    row = await account_row(conn, acct)
    assert (row["retry_tier"], row["status"]) == (0, "active")
    assert await conn.fetchval("SELECT state FROM recharge_runs WHERE id = $1", run_id) == "pending"
    # Once fixed, the dead-lettered message is requeued and the run resumes with the same key.
    assert await run_to_completion(engine, sim, run_id, LIMITS) == "succeeded"
    await assert_books_balance(conn, sim, acct)


async def test_a_duplicated_run_message_processed_concurrently_charges_once_per_key(
    engine: Any, conn: Any, settings: Settings
) -> None:
    client = aioredis.Redis.from_url(settings.redis_url)
    prefix = f"test-simgw-{uuid.uuid4().hex[:8]}"
    slow = SimulatedGateway(client, prefix, latency_s=0.05)
    try:
        acct = new_id()
        await create_account(
            conn, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
        )
        run_id = (await debit(engine, acct, "90")).runs_started[acct]

        async def deliver() -> None:
            while True:
                try:
                    await run_to_completion(engine, slow, run_id, LIMITS)
                    return
                except TransientGatewayError:  # idempotency_key_in_use: dramatiq retries
                    await asyncio.sleep(0.02)

        await asyncio.gather(deliver(), deliver(), deliver())
        assert (await balance_and_ledger(conn, acct))[0] == 110
        assert len(await charges(conn, acct)) == 5
        await assert_books_balance(conn, slow, acct)
    finally:
        await delete_state(client, prefix)
        await client.aclose()


async def test_single_mode_charges_the_smallest_multiple_once(
    engine: Any, conn: Any, sim: Any
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10", payment_method="pm_card_visa")
    await set_auto_recharge(
        conn,
        acct,
        TEST_SETTINGS,
        balance_amount=Decimal(100),
        recharge_amount=Decimal(20),
        mode="single",
    )
    await settle(engine, sim, acct)
    assert [c["amount"] for c in await charges(conn, acct)] == [Decimal(100)]
    assert (await balance_and_ledger(conn, acct))[0] == 110


async def test_a_run_stops_at_the_safety_cap_and_says_so(engine: Any, conn: Any, sim: Any) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="0", threshold="400", recharge="20", payment_method="pm_card_visa"
    )
    capped = PolicyConfig(retry_min_interval=timedelta(0), run_max_charges=3)
    await debit(engine, acct, "1", capped)
    await settle(engine, sim, acct, capped)
    assert len(await charges(conn, acct)) == 3
    assert (
        await conn.fetchval("SELECT state FROM recharge_runs WHERE account_id = $1", acct)
        == "capped"
    )
    assert [t for t, _ in await events(conn, acct)][-1] == "recharge.capped"


async def test_duplicate_delivery_of_a_finished_run_does_nothing(
    engine: Any, conn: Any, sim: Any
) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    run_id = (await debit(engine, acct, "90")).runs_started[acct]
    assert await run_to_completion(engine, sim, run_id, LIMITS) == "succeeded"
    assert await run_to_completion(engine, sim, run_id, LIMITS) == "succeeded"
    assert len(await charges(conn, acct)) == 5


async def test_no_card_on_file_is_a_failed_attempt(engine: Any, conn: Any, sim: Any) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="100", threshold="100", recharge="20")
    await debit(engine, acct, "1")
    await settle(engine, sim, acct)
    [charge] = await charges(conn, acct)
    assert (charge["status"], charge["failure_code"]) == ("failed", "no_payment_method")
    assert (await account_row(conn, acct))["retry_tier"] == 1


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


async def test_limits_are_enforced_with_clear_reasons(conn: Any) -> None:
    acct = new_id()
    await create_account(conn, acct, payment_method="pm_card_visa")
    s = TEST_SETTINGS  # minimum 20, maximum 500

    async def auto(t: str, r: str) -> Any:
        return await set_auto_recharge(
            conn, acct, s, balance_amount=Decimal(t), recharge_amount=Decimal(r)
        )

    with pytest.raises(LimitError, match=re.escape("below the minimum of 20.00")):
        await auto("100", "19.99")
    with pytest.raises(
        LimitError, match=re.escape("above the maximum of 500.00; support can raise it")
    ):
        await auto("1000", "600")
    with pytest.raises(LimitError, match="minor unit"):
        await auto("100", "20.001")
    await set_max_recharge(conn, acct, Decimal(1000))
    await auto("1000", "600")  # support raised this account's maximum
    with pytest.raises(LimitError, match="below the minimum"):
        await request_manual_recharge(conn, acct, Decimal(5), s)
    with pytest.raises(LimitError, match=re.escape("above the maximum of 1000.00")):
        await request_manual_recharge(conn, acct, Decimal(1500), s)
    default_min = Settings()  # type: ignore[call-arg]
    assert default_min.min_recharge_amount == 25
    with pytest.raises(LimitError, match=re.escape("below the minimum of 25.00")):
        await request_manual_recharge(conn, acct, Decimal(20), default_min)


async def test_manual_recharges_credit_once_and_failures_leave_the_tier_alone(
    engine: Any, conn: Any, sim: Any
) -> None:
    from common.accounts.store import AccountError as AdminError

    acct = new_id()
    await create_account(conn, acct, balance="5")
    with pytest.raises(AdminError, match="no card on file"):
        await request_manual_recharge(conn, acct, Decimal(50), TEST_SETTINGS)
    await attach_card(conn, sim, acct, "pm_card_visa", TEST_SETTINGS)
    run_id = await request_manual_recharge(conn, acct, Decimal(50), TEST_SETTINGS)
    with pytest.raises(AdminError, match="already in progress"):
        await request_manual_recharge(conn, acct, Decimal(50), TEST_SETTINGS)
    await settle(engine, sim, acct)
    assert (await balance_and_ledger(conn, acct))[0] == 55
    await attach_card(conn, sim, acct, "pm_card_chargeDeclinedInsufficientFunds", TEST_SETTINGS)
    await request_manual_recharge(conn, acct, Decimal(50), TEST_SETTINGS)
    await settle(engine, sim, acct)
    rows = await charges(conn, acct)
    assert [(c["run_kind"], c["status"], c["failure_code"]) for c in rows] == [
        ("manual", "succeeded", None),
        ("manual", "failed", "insufficient_funds"),
    ]
    assert (await account_row(conn, acct))["retry_tier"] == 0
    assert rows[0]["run_id"] == run_id
    await assert_books_balance(conn, sim, acct)


async def test_a_support_credit_reactivates_a_suspended_account(conn: Any) -> None:
    from common.accounts.support import credit_account

    acct = new_id()
    await create_account(
        conn, acct, balance="0", status="suspended", tier=4, threshold="100", recharge="20"
    )
    await conn.execute(
        "INSERT INTO ledger_entries (account_id, amount, balance_after, kind, "
        "reference) VALUES ($1, -5, -5, 'usage', $2)",
        acct,
        f"x-{acct}",
    )
    await conn.execute("UPDATE accounts SET balance = -5 WHERE id = $1", acct)
    balance, _ = await credit_account(conn, acct, Decimal(3), "goodwill")
    assert balance == -2 and (await account_row(conn, acct))["status"] == "suspended"
    balance, _ = await credit_account(conn, acct, Decimal(10), "goodwill")
    assert balance == 8 and (await account_row(conn, acct))["status"] == "active"


async def test_limits_object_from_settings() -> None:
    assert ChargeLimits.from_settings(Settings()) == ChargeLimits(  # type: ignore[call-arg]
        Decimal(25), Decimal(10000)
    )
