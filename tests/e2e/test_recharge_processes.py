"""The recharge engine as real processes: relay, balance, charge and retry workers on the real
broker, killed with SIGKILL at every step of a charge."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from common.broker.factory import build_broker
from common.broker.publish import usage_message
from common.gateway.simulated import SimulatedGateway, inject_faults
from config.settings import Settings
from tests.support import localstripe
from tests.support.factories import balance_and_ledger, create_account, event, new_id
from tests.support.procs import Proc, dramatiq_worker, relay, worker_env
from tests.support.waiting import until

pytestmark = pytest.mark.slow


def stack_env(namespace: str, sim_prefix: str, **extra: str) -> dict[str, str]:
    base = {
        "CONTACTO_SIMULATED_PREFIX": sim_prefix,
        "MIN_RECHARGE_AMOUNT": "20",
        "RETRY_MIN_INTERVAL_SECONDS": "1",
    }
    return worker_env(namespace, **{**base, **extra})


@contextmanager
def processes(env: dict[str, str], *names: str) -> Iterator[dict[str, Proc]]:
    starters = {
        "relay": lambda: relay(env),
        "balance": lambda: dramatiq_worker("workers.balance", "usage", env, threads=4),
        "charge": lambda: dramatiq_worker("workers.charge", "charges", env, threads=4),
        "retry": lambda: dramatiq_worker("workers.retry", "retries", env, threads=2),
    }
    with ExitStack() as stack:
        procs = {}
        for name in names:
            proc = starters[name]()
            stack.callback(proc.stop)
            procs[name] = proc
        yield procs


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def charge_rows(conn: Any, account: str) -> list[Any]:
    return list(
        await conn.fetch(
            "SELECT id, status, idempotency_key, amount, gateway_calls, failure_code FROM charges "
            "WHERE account_id = $1 ORDER BY id",
            account,
        )
    )


async def account(conn: Any, account_id: str) -> Any:
    return await conn.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)


async def assert_exactly_once(conn: Any, settings: Settings, prefix: str, acct: str) -> None:
    client = aioredis.Redis.from_url(settings.redis_url)
    sim = SimulatedGateway(client, prefix)
    try:
        for c in await charge_rows(conn, acct):
            moved = await sim.charges_made(c["idempotency_key"])
            credits = await conn.fetchval(
                "SELECT count(*) FROM ledger_entries WHERE kind = 'recharge' AND reference = $1",
                f"charge-{c['id']}",
            )
            expected = 1 if c["status"] == "succeeded" else 0
            assert (moved, credits) == (expected, expected), c["idempotency_key"]
    finally:
        await client.aclose()
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total


async def test_faq_example_and_the_ladder_through_every_process(
    conn: Any, namespace: str, sim_prefix: str, settings: Settings
) -> None:
    env = stack_env(namespace, sim_prefix)
    faq, ladder = new_id("faq"), new_id("ladder")
    await create_account(
        conn, faq, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    await create_account(
        conn,
        ladder,
        balance="100",
        threshold="100",
        recharge="20",
        payment_method="pm_card_chargeDeclined",
    )
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
    with processes(env, "relay", "balance", "charge", "retry"):
        broker.enqueue(usage_message(event(faq, "90")))
        await until(
            lambda: balance_and_ledger(conn, faq), lambda b: b[0] == 110, what="FAQ: five charges"
        )
        assert [c["status"] for c in await charge_rows(conn, faq)] == ["succeeded"] * 5
        # One big spend, then nothing: the retry worker's delayed re-checks walk the ladder
        # on their own down to the 0 % tier, which waits for the balance to reach 0.
        broker.enqueue(usage_message(event(ladder, "95")))
        await until(
            lambda: account(conn, ladder),
            lambda a: a["retry_tier"] == 4,
            timeout_s=60,
            what="tier 4 armed",
        )
        assert len(await charge_rows(conn, ladder)) == 4
        broker.enqueue(usage_message(event(ladder, "10")))
        await until(
            lambda: account(conn, ladder), lambda a: a["status"] == "suspended", what="suspension"
        )
        assert [c["failure_code"] for c in await charge_rows(conn, ladder)] == ["card_declined"] * 5
        result = cli(env, "accounts", "card", ladder, "--payment-method", "pm_card_visa")
        assert result.returncode == 0, result.stderr
        assert "recharge attempt started" in result.stdout
        row = await until(
            lambda: account(conn, ladder), lambda a: a["status"] == "active", what="reactivation"
        )
        assert row["retry_tier"] == 0
        await until(
            lambda: balance_and_ledger(conn, ladder), lambda b: b[0] >= 100, what="back above T"
        )
        # A manual recharge, waited for on the command line.
        result = cli(env, "accounts", "recharge", faq, "--amount", "50", "--wait")
        assert result.returncode == 0, result.stderr
        assert "succeeded" in result.stdout
    await assert_exactly_once(conn, settings, sim_prefix, faq)
    await assert_exactly_once(conn, settings, sim_prefix, ladder)
    assert (await balance_and_ledger(conn, faq))[0] == 160


@pytest.mark.parametrize(
    "crash_at", ["charge.before_gateway", "charge.after_gateway", "charge.after_credit"]
)
async def test_sigkill_at_each_step_of_a_charge_ends_with_one_charge_and_one_credit(
    conn: Any,
    namespace: str,
    sim_prefix: str,
    settings: Settings,
    tmp_path: Any,
    crash_at: str,
) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    env = stack_env(
        namespace,
        sim_prefix,
        CONTACTO_CRASH_AT=crash_at,
        CONTACTO_CRASH_MARKER=str(tmp_path / "crash"),
    )
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
    with processes(env, "relay", "balance"):
        broker.enqueue(usage_message(event(acct, "90")))
        charge = dramatiq_worker("workers.charge", "charges", env, threads=4)
        assert charge.wait_exit(timeout_s=60) != 0  # killed itself at the crash point
        charge.stop()
        assert (tmp_path / f"crash.{crash_at}").exists()
        rows = await charge_rows(conn, acct)
        if crash_at == "charge.after_credit":
            # The credit's transaction also stored the run's next charge, not yet sent.
            assert [c["status"] for c in rows] == ["succeeded", "pending"]
        else:
            assert [c["status"] for c in rows] == ["pending"]
        with processes(env, "charge"):  # the message comes back after the heartbeat timeout
            await until(
                lambda: balance_and_ledger(conn, acct),
                lambda b: b[0] == 110,
                timeout_s=60,
                what="run completed after the crash",
            )
    rows = await charge_rows(conn, acct)
    assert [c["status"] for c in rows] == ["succeeded"] * 5
    if crash_at != "charge.after_credit":
        assert rows[0]["gateway_calls"] == 2  # the same key, replayed once
    await assert_exactly_once(conn, settings, sim_prefix, acct)


async def test_gateway_timeouts_and_lost_responses_never_charge_twice(
    conn: Any, namespace: str, sim_prefix: str, settings: Settings
) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    client = aioredis.Redis.from_url(settings.redis_url)
    await inject_faults(
        client,
        sim_prefix,
        "lost_response",
        "timeout",
        "lost_response",
        "rate_limit",
        "server_error",
        "lost_response",
    )
    await client.aclose()
    env = stack_env(namespace, sim_prefix)
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
    with processes(env, "relay", "balance", "charge"):
        broker.enqueue(usage_message(event(acct, "90")))
        await until(
            lambda: balance_and_ledger(conn, acct),
            lambda b: b[0] == 110,
            timeout_s=90,
            what="run completed through the faults",
        )
    rows = await charge_rows(conn, acct)
    assert len(rows) == 5 and sum(c["gateway_calls"] for c in rows) == 5 + 6
    await assert_exactly_once(conn, settings, sim_prefix, acct)


@pytest.mark.skipif(not localstripe.available(), reason="localstripe is not installed")
async def test_the_stripe_gateway_end_to_end_against_localstripe(
    conn: Any, namespace: str, sim_prefix: str
) -> None:
    with localstripe.run_localstripe() as ls:
        env = stack_env(
            namespace,
            sim_prefix,
            PAYMENT_GATEWAY="stripe",
            RETRY_MIN_INTERVAL_SECONDS="3600",
            STRIPE_API_KEY=ls.api_key,
            STRIPE_API_BASE=ls.api_base,
        )
        good, bad = new_id("stripe"), new_id("stripe-decline")
        for acct in (good, bad):
            await create_account(conn, acct, balance="100", threshold="100", recharge="20")
        assert (
            cli(env, "accounts", "card", good, "--payment-method", "pm_card_visa").returncode == 0
        )
        # 4000000000000341: attaches, then declines at charge time.
        assert (
            cli(
                env, "accounts", "card", bad, "--payment-method", "pm_card_chargeCustomerFail"
            ).returncode
            == 0
        )
        broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
        with processes(env, "relay", "balance", "charge", "retry") as procs:
            broker.enqueue(usage_message(event(good, "90")))
            broker.enqueue(usage_message(event(bad, "90")))
            await until(
                lambda: balance_and_ledger(conn, good),
                lambda b: b[0] == 110,
                timeout_s=60,
                what="stripe: five charges",
            )
            row = await until(
                lambda: account(conn, bad),
                lambda a: a["retry_tier"] == 1,
                what="stripe decline arms tier 1",
            )
            assert row["status"] == "active"
            assert "sk_test" not in procs["charge"].output()
        rows = await charge_rows(conn, good)
        assert [c["status"] for c in rows] == ["succeeded"] * 5
        assert [c["failure_code"] for c in await charge_rows(conn, bad)] == ["card_declined"]
        customer = (await account(conn, good))["gateway_customer_id"]
        assert customer and customer.startswith("cus_")
    balance, total, _ = await balance_and_ledger(conn, good)
    assert balance == total == Decimal(110)
