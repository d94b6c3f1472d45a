"""The console's card setup with PAYMENT_GATEWAY=stripe (common/recharge/settings.py) against
localstripe: a SetupIntent per account, confirmed by the browser (here: by its API, as
Stripe.js would), then its card on file with brand, last four and expiry. A SetupIntent of
another account's customer is refused."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from common.gateway import CardRejected
from common.gateway.stripe_gateway import StripeGateway
from common.recharge.settings import finish_card_setup, start_card_setup
from config.settings import Settings
from tests.support.factories import create_account, new_id
from tests.support.localstripe import Localstripe

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def gateway(localstripe_gateway: StripeGateway) -> StripeGateway:
    return localstripe_gateway


async def confirm_in_browser(ls: Localstripe, client_secret: str, number: str) -> str:
    """What Stripe.js's confirmCardSetup sends (localstripe's double of it): the card goes to
    Stripe with the client secret, never to us. Returns the SetupIntent's id."""
    seti = client_secret.split("_secret_")[0]
    async with httpx.AsyncClient(base_url=ls.api_base, timeout=10) as client:
        answer = await client.post(
            f"/v1/setup_intents/{seti}/confirm",
            json={
                "key": "pk_test_contacto",
                "client_secret": client_secret,
                "payment_method_data": {
                    "type": "card",
                    "card": {"number": number, "exp_month": 7, "exp_year": 2031, "cvc": "123"},
                },
            },
        )
    assert answer.status_code == 200, answer.text
    return seti


async def test_a_confirmed_setup_intent_puts_its_card_on_file(
    conn: Any, gateway: StripeGateway, localstripe: Localstripe, settings: Settings
) -> None:
    account = new_id("seti")
    await create_account(conn, account, balance="50")
    secret = await start_card_setup(conn, gateway, account)
    customer = await conn.fetchval(
        "SELECT gateway_customer_id FROM accounts WHERE id = $1", account
    )
    assert customer.startswith("cus_")
    seti = await confirm_in_browser(localstripe, secret, "4242424242424242")
    result = await finish_card_setup(conn, gateway, account, seti, settings)
    row = await conn.fetchrow("SELECT * FROM accounts WHERE id = $1", account)
    assert row["payment_method"] == result.payment_method and result.customer_id == customer
    assert (row["card_brand"], row["card_last4"], row["card_exp_month"], row["card_exp_year"]) == (
        "visa",
        "4242",
        7,
        2031,
    )
    # A second setup keeps the same customer.
    await start_card_setup(conn, gateway, account)
    assert customer == await conn.fetchval(
        "SELECT gateway_customer_id FROM accounts WHERE id = $1", account
    )


async def test_another_accounts_setup_intent_or_an_unconfirmed_one_is_refused(
    conn: Any, gateway: StripeGateway, localstripe: Localstripe, settings: Settings
) -> None:
    mine, theirs = new_id("seti"), new_id("seti")
    for account in (mine, theirs):
        await create_account(conn, account, balance="50")
    await start_card_setup(conn, gateway, mine)
    their_secret = await start_card_setup(conn, gateway, theirs)
    their_seti = await confirm_in_browser(localstripe, their_secret, "4242424242424242")
    with pytest.raises(CardRejected):
        await finish_card_setup(conn, gateway, mine, their_seti, settings)
    unconfirmed = (await start_card_setup(conn, gateway, mine)).split("_secret_")[0]
    with pytest.raises(CardRejected):
        await finish_card_setup(conn, gateway, mine, unconfirmed, settings)
    assert await conn.fetchval("SELECT payment_method FROM accounts WHERE id = $1", mine) is None
