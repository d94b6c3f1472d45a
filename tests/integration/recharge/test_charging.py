"""The charge worker's service (common/recharge/charging.py): a run, one charge at a time, each
step a recovery point; idempotency keys replayed, never a second charge."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from common.gateway import GatewayConfigError, TransientGatewayError
from common.gateway.simulated import SimulatedGateway, delete_state, inject_faults
from common.recharge.charging import (
    PendingCharge,
    next_step,
    record_outcome,
    run_to_completion,
)
from common.recharge.config import ChargeLimits, PolicyConfig
from common.recharge.ladder import record_failure
from common.recharge.settings import attach_card, set_auto_recharge
from config.settings import Settings
from tests.support.factories import balance_and_ledger, create_account, new_id
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


async def test_debits_arriving_during_a_run_are_taken_into_account(
    engine: Any, conn: Any, sim: Any
) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    run_id = (await debit(engine, acct, "90")).runs_started[acct]
    step = await next_step(conn, run_id, LIMITS)
    assert isinstance(step, PendingCharge)
    await record_outcome(conn, step, await sim.charge(step.request()))
    later = await debit(engine, acct, "30")  # 10 + 20 - 30 = 0, while the run is in flight
    assert later.runs_started == {}
    await settle(engine, sim, acct)
    balance, _, _ = await balance_and_ledger(conn, acct)
    assert balance == 100 and len(await charges(conn, acct)) == 6
    await assert_books_balance(conn, sim, acct)


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
        sim._redis, sim.prefix_for_tests, "timeout", "rate_limit", "server_error", "lost_response"
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


async def test_a_run_whose_amount_the_limits_now_refuse_ends_as_a_failed_attempt(
    engine: Any, conn: Any, sim: Any
) -> None:
    """Regression: raising MIN_RECHARGE_AMOUNT above an account's R made its run raise
    LimitError, stay pending without a charge, and block every later run: the balance could
    fall without limit, with no charge, no ladder and no suspension."""
    acct = new_id()
    await create_account(
        conn, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    run_id = (await debit(engine, acct, "10")).runs_started[acct]
    raised = ChargeLimits(minimum=Decimal(30), global_max=Decimal(500))
    assert await run_to_completion(engine, sim, run_id, raised) == "failing"
    [charge] = await charges(conn, acct)
    assert (charge["status"], charge["failure_code"], charge["gateway_calls"]) == (
        "failed",
        "recharge_amount_not_allowed",
        0,
    )
    assert "below the minimum of 30.00" in charge["failure_message"]
    await record_failure(conn, run_id, NO_WAIT)
    assert (await account_row(conn, acct))["retry_tier"] == 1
    assert await conn.fetchval("SELECT state FROM recharge_runs WHERE id = $1", run_id) == "failed"


async def test_a_resumed_charge_whose_key_the_gateway_forgot_is_found_not_repeated(
    engine: Any, conn: Any, sim: Any
) -> None:
    """Regression (simulated gateway): lost response, key forgotten, redelivery: one charge."""
    acct = new_id()
    await create_account(
        conn, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    run_id = (await debit(engine, acct, "1")).runs_started[acct]
    await inject_faults(sim._redis, sim.prefix_for_tests, "lost_response")
    with pytest.raises(TransientGatewayError):
        await run_to_completion(engine, sim, run_id, LIMITS)
    [pending] = await charges(conn, acct)
    await sim.forget_key(pending["idempotency_key"])
    assert await run_to_completion(engine, sim, run_id, LIMITS) == "succeeded"
    assert await sim.charges_made(pending["idempotency_key"]) == 1
    assert (await balance_and_ledger(conn, acct))[0] == 119
    await assert_books_balance(conn, sim, acct)


async def test_a_detached_card_is_a_failed_attempt_and_the_next_attempt_uses_the_new_card(
    engine: Any, conn: Any, sim: Any
) -> None:
    """Regression: a payment method detached at the gateway was our misconfiguration (dead
    letter, run pending forever), and a new card did not help: the pending charge kept the
    old one. Now: no_payment_method, a failed attempt; the new card's attempt succeeds."""
    acct = new_id()
    await create_account(conn, acct, balance="100", threshold="100", recharge="20")
    card = await attach_card(conn, sim, acct, "pm_card_visa", TEST_SETTINGS)
    await sim.detach_card(customer_id=card.customer_id, payment_method="pm_card_visa")
    run_id = (await debit(engine, acct, "1")).runs_started[acct]
    assert await run_to_completion(engine, sim, run_id, LIMITS) == "failing"
    await record_failure(conn, run_id, NO_WAIT)
    [failed] = await charges(conn, acct)
    assert (failed["status"], failed["failure_code"]) == ("failed", "no_payment_method")
    assert (await account_row(conn, acct))["retry_tier"] == 1
    renewed = await attach_card(conn, sim, acct, "pm_card_mastercard", TEST_SETTINGS)
    assert renewed.attempt_run_id is not None
    assert await run_to_completion(engine, sim, renewed.attempt_run_id, LIMITS) == "succeeded"
    rows = await charges(conn, acct)
    assert [(c["payment_method"], c["status"]) for c in rows] == [
        ("pm_card_visa", "failed"),
        ("pm_card_mastercard", "succeeded"),
    ]
    row = await account_row(conn, acct)
    assert (row["retry_tier"], row["balance"]) == (0, 119)


async def test_a_run_charges_to_the_balance_amount_in_force_not_the_one_it_started_with(
    engine: Any, conn: Any, sim: Any
) -> None:
    """Found by the model-based test: T raised from 60 to 100 while a run was in flight; the run
    stopped at 60 and the account, idle, stayed below T with nothing to bring it up."""
    acct = new_id()
    await create_account(
        conn, acct, balance="60", threshold="60", recharge="20", payment_method="pm_card_visa"
    )
    run_id = (await debit(engine, acct, "20")).runs_started[acct]  # 40 < 60
    await set_auto_recharge(
        conn, acct, TEST_SETTINGS, balance_amount=Decimal(100), recharge_amount=Decimal(25)
    )
    assert await run_to_completion(engine, sim, run_id, LIMITS) == "succeeded"
    assert [c["amount"] for c in await charges(conn, acct)] == [Decimal(25)] * 3
    assert (await balance_and_ledger(conn, acct))[0] == 115
