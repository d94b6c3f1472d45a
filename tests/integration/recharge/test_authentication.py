"""A recharge that failed with authentication_required, completed by the customer on-session
(common/recharge/authentication.py), against localstripe and the real PostgreSQL.

The automatic run charges a 3-D Secure card off-session (localstripe: 4000002500003155 leaves
the intent `requires_action`), the retry worker counts the failure (tier 1). Then the console's
part: begin, the browser's part played as localstripe's Stripe.js double plays it
(confirmCardPayment POSTs /v1/payment_intents/<pi>/_authenticate?success=...), and settle."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from common.accounts.support import console_view
from common.db.engine import raw_connection
from common.gateway.stripe_gateway import StripeGateway
from common.recharge import authentication as auth
from common.recharge.authentication import (
    AlreadySettled,
    Credited,
    NotConfirmed,
    NothingStarted,
    Refusal,
    Refused,
    Started,
    StillPending,
)
from common.recharge.settings import attach_card
from tests.support.factories import balance_and_ledger, create_account, new_id
from tests.support.localstripe import (
    THREE_DS_CARD,
    Localstripe,
    authenticate,
    card_payment_method,
)
from tests.support.pipeline import TEST_SETTINGS, account_row, debit, events, settle

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def gateway(localstripe_gateway: StripeGateway) -> StripeGateway:
    return localstripe_gateway


async def awaiting_customer(engine: Any, conn: Any, gateway: StripeGateway, ls: Localstripe) -> str:
    """An account whose automatic recharge failed with authentication_required (tier 1)."""
    account = new_id("3ds")
    await create_account(conn, account, balance="100", threshold="100", recharge="25")
    card = await asyncio.to_thread(card_payment_method, ls.api_base, THREE_DS_CARD)
    await attach_card(conn, gateway, account, card, TEST_SETTINGS)
    await debit(engine, account, "1")  # 99 < 100: the automatic run starts
    await settle(engine, gateway, account)  # charge worker, then retry worker
    row = await account_row(conn, account)
    assert (row["balance"], row["retry_tier"]) == (Decimal("99"), 1)
    view = await console_view(conn, account)
    assert view["awaiting_authentication"]["amount"] == Decimal("25")
    return account


async def browser_confirms(ls: Localstripe, started: Started, *, success: bool) -> None:
    """What localstripe's Stripe.js double does for confirmCardPayment(client_secret, ...)."""
    await asyncio.to_thread(authenticate, ls.api_base, started.client_secret, success=success)


async def recharge_credits(conn: Any, account: str) -> int:
    n: int = await conn.fetchval(
        "SELECT count(*) FROM ledger_entries WHERE account_id = $1 AND kind = 'recharge'", account
    )
    return n


async def assert_books_balance(conn: Any, account: str) -> None:
    balance, total, _ = await balance_and_ledger(conn, account)
    assert balance == total


async def test_a_confirmed_authentication_credits_once_and_resets_the_ladder(
    engine: Any, conn: Any, gateway: StripeGateway, localstripe: Localstripe
) -> None:
    account = await awaiting_customer(engine, conn, gateway, localstripe)
    assert isinstance(await auth.settle_account(conn, gateway, account), NothingStarted)
    started = await auth.begin(conn, gateway, account)
    assert isinstance(started, Started)
    assert started.payment_method is not None and started.payment_method.startswith("pm_")
    assert started.client_secret not in repr(started)
    ref = await conn.fetchval("SELECT gateway_ref FROM charges WHERE id = $1", started.charge_id)
    intent = await gateway.retrieve_intent(ref)
    assert (intent.status, intent.amount, intent.currency) == ("requires_action", 2500, "usd")
    assert intent.client_secret == started.client_secret
    assert started.client_secret not in repr(intent)
    # Stored before the secret went anywhere.
    row = await conn.fetchrow(
        "SELECT * FROM charge_authentications WHERE charge_id = $1", started.charge_id
    )
    assert row["account_id"] == account and row["settled_at"] is None
    # The browser has not confirmed yet: nothing to credit.
    assert isinstance(await auth.settle_account(conn, gateway, account), StillPending)
    await browser_confirms(localstripe, started, success=True)

    credited = await auth.settle_account(conn, gateway, account)
    assert isinstance(credited, Credited)
    assert (credited.amount, credited.balance) == (Decimal("25"), Decimal("124"))
    row = await account_row(conn, account)
    assert (row["balance"], row["retry_tier"], row["status"]) == (Decimal("124"), 0, "active")
    await assert_books_balance(conn, account)
    assert await recharge_credits(conn, account) == 1
    new_charge = await conn.fetchrow("SELECT * FROM charges WHERE id = $1", credited.charge_id)
    assert new_charge["status"] == "succeeded"
    assert new_charge["idempotency_key"] == f"authenticate-{started.charge_id}"
    assert (await console_view(conn, account))["awaiting_authentication"] is None
    succeeded = [p for t, p in await events(conn, account) if t == "recharge.succeeded"]
    assert [(p["run_id"], p["kind"]) for p in succeeded] == [(credited.run_id, "manual")]

    # The browser posts twice: nothing more.
    again = await auth.settle_account(conn, gateway, account)
    assert again == AlreadySettled(credited.run_id)
    assert await recharge_credits(conn, account) == 1
    assert (await account_row(conn, account))["balance"] == Decimal("124")


async def test_the_browser_and_the_sweep_racing_credit_once(
    engine: Any, conn: Any, gateway: StripeGateway, localstripe: Localstripe
) -> None:
    account = await awaiting_customer(engine, conn, gateway, localstripe)
    started = await auth.begin(conn, gateway, account)
    assert isinstance(started, Started)
    await browser_confirms(localstripe, started, success=True)

    async def report() -> Any:
        async with raw_connection(engine) as c:
            return await auth.settle_account(c, gateway, account)

    async def sweep() -> Any:
        async with raw_connection(engine) as c:
            return await auth.settle(c, gateway, started.charge_id)

    results = await asyncio.gather(report(), sweep(), report())
    assert sorted(type(r).__name__ for r in results) == [
        "AlreadySettled",
        "AlreadySettled",
        "Credited",
    ]
    assert await recharge_credits(conn, account) == 1
    await assert_books_balance(conn, account)


async def test_the_sweep_settles_a_confirmation_the_browser_never_reported(
    engine: Any, conn: Any, gateway: StripeGateway, localstripe: Localstripe
) -> None:
    account = await awaiting_customer(engine, conn, gateway, localstripe)
    started = await auth.begin(conn, gateway, account)
    assert isinstance(started, Started)
    await browser_confirms(localstripe, started, success=True)  # ... and the tab closes
    # Not yet due: the browser has CONTACTO_AUTHENTICATION_SWEEP_AFTER_S to report.
    await auth.sweep_once(engine, gateway, after_s=3600, give_up_after_s=86_400)
    assert await recharge_credits(conn, account) == 0
    await auth.sweep_once(engine, gateway, after_s=0.001, give_up_after_s=86_400)
    row = await account_row(conn, account)
    assert (row["balance"], row["retry_tier"]) == (Decimal("124"), 0)
    assert await recharge_credits(conn, account) == 1
    await assert_books_balance(conn, account)
    # The browser's report, late: nothing more.
    assert isinstance(await auth.settle_account(conn, gateway, account), AlreadySettled)
    assert await recharge_credits(conn, account) == 1


async def test_a_refused_authentication_credits_nothing(
    engine: Any, conn: Any, gateway: StripeGateway, localstripe: Localstripe
) -> None:
    account = await awaiting_customer(engine, conn, gateway, localstripe)
    started = await auth.begin(conn, gateway, account)
    assert isinstance(started, Started)
    await browser_confirms(localstripe, started, success=False)
    refused = await auth.settle_account(conn, gateway, account)
    assert refused == NotConfirmed("requires_payment_method")
    row = await account_row(conn, account)
    assert (row["balance"], row["retry_tier"]) == (Decimal("99"), 1)
    assert await recharge_credits(conn, account) == 0
    assert await conn.fetchval(
        "SELECT outcome FROM charge_authentications WHERE charge_id = $1", started.charge_id
    ) == ("not_confirmed")
    # Still the customer's to complete: the console keeps showing it.
    assert (await console_view(conn, account))["awaiting_authentication"] is not None


async def test_an_unconfirmed_authentication_is_given_up_after_the_give_up_time(
    engine: Any, conn: Any, gateway: StripeGateway, localstripe: Localstripe
) -> None:
    account = await awaiting_customer(engine, conn, gateway, localstripe)
    started = await auth.begin(conn, gateway, account)
    assert isinstance(started, Started)
    # The customer never answered the bank: still requires_action at Stripe.
    await auth.sweep_once(engine, gateway, after_s=0.001, give_up_after_s=86_400)
    assert (
        await conn.fetchval(
            "SELECT settled_at FROM charge_authentications WHERE charge_id = $1", started.charge_id
        )
        is None
    )
    await conn.execute(
        "UPDATE charge_authentications SET checked_at = NULL WHERE charge_id = $1",
        started.charge_id,
    )
    await auth.sweep_once(engine, gateway, after_s=0.001, give_up_after_s=0.001)
    assert await conn.fetchval(
        "SELECT outcome FROM charge_authentications WHERE charge_id = $1", started.charge_id
    ) == ("expired")
    assert await recharge_credits(conn, account) == 0
    # Starting again reopens it.
    again = await auth.begin(conn, gateway, account)
    assert isinstance(again, Started) and again.charge_id == started.charge_id
    assert (
        await conn.fetchval(
            "SELECT outcome FROM charge_authentications WHERE charge_id = $1", started.charge_id
        )
        is None
    )


async def test_another_account_can_neither_begin_nor_settle_it(
    engine: Any, conn: Any, gateway: StripeGateway, localstripe: Localstripe
) -> None:
    account = await awaiting_customer(engine, conn, gateway, localstripe)
    other = new_id("3ds")
    await create_account(conn, other, balance="10")
    assert await auth.begin(conn, gateway, other) == Refused(Refusal.NOTHING_AWAITING)
    started = await auth.begin(conn, gateway, account)
    assert isinstance(started, Started)
    await browser_confirms(localstripe, started, success=True)
    assert isinstance(await auth.settle_account(conn, gateway, other), NothingStarted)
    assert (await account_row(conn, other))["balance"] == Decimal("10")
    assert await recharge_credits(conn, account) == 0
