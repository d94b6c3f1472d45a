"""The console's on-session 3-D Secure step with PAYMENT_GATEWAY=stripe, in process (httpx
against the ASGI app, localstripe as Stripe): /billing/authenticate/start hands the failed
charge's client secret to the page's script, Stripe.js's part is played as localstripe's double
plays it, and /billing/authenticate/confirmed settles with what Stripe says."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from common.gateway.stripe_gateway import StripeGateway
from common.recharge.settings import attach_card
from config.settings import Settings, WebSettings
from tests.integration.web.test_console import client_for, csrf_of, customer
from tests.support.localstripe import (
    THREE_DS_CARD,
    Localstripe,
    authenticate,
    card_payment_method,
)
from tests.support.pipeline import TEST_SETTINGS, debit, settle
from web.app import create_app
from web.console.routes import NOT_CONFIRMED_TEXT

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
async def app(
    test_settings: Settings, web_settings: WebSettings, localstripe: Localstripe
) -> AsyncIterator[FastAPI]:
    settings = test_settings.model_copy(
        update={
            "payment_gateway": "stripe",
            "stripe_api_key": localstripe.api_key,
            "stripe_api_base": localstripe.api_base,
        }
    )
    web = web_settings.model_copy(
        update={
            "stripe_publishable_key": "pk_test_contacto",
            "stripe_js_url": f"{localstripe.api_base}/js.stripe.com/v3/",
        }
    )
    application = create_app(Settings.model_validate(settings.model_dump()), web)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def console(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as client:
        yield client


async def awaiting(
    app: FastAPI, console: httpx.AsyncClient, conn: Any, engine: Any, ls: Localstripe
) -> str:
    """A logged-in customer whose automatic recharge failed with authentication_required."""
    account = await customer(console, conn, balance="100")
    gateway = app.state.resources.gateway()
    assert isinstance(gateway, StripeGateway)
    await conn.execute(
        "UPDATE accounts SET auto_recharge_enabled = true, balance_amount = 100, "
        "recharge_amount = 25 WHERE id = $1",
        account,
    )
    card = await asyncio.to_thread(card_payment_method, ls.api_base, THREE_DS_CARD)
    await attach_card(conn, gateway, account, card, TEST_SETTINGS)
    await debit(engine, account, "1")
    await settle(engine, gateway, account)
    return account


async def start(console: httpx.AsyncClient, page: str) -> httpx.Response:
    return await console.post(
        "/billing/authenticate/start", headers={"X-CSRF-Token": csrf_of(page)}
    )


async def bank_answers(localstripe: Localstripe, secret: str, *, success: bool) -> None:
    await asyncio.to_thread(authenticate, localstripe.api_base, secret, success=success)


async def test_the_customer_completes_the_payment_with_stripe_js(
    app: FastAPI,
    console: httpx.AsyncClient,
    conn: Any,
    engine: Any,
    localstripe: Localstripe,
    log_lines: io.StringIO,
) -> None:
    account = await awaiting(app, console, conn, engine, localstripe)
    billing = await console.get("/billing")
    assert "Your bank needs you to confirm a payment" in billing.text
    assert 'href="/billing/authenticate"' in billing.text
    page = (await console.get("/billing/authenticate")).text
    assert 'id="stripe-authenticate-form"' in page and "js.stripe.com/v3/" in page
    # The script's POST needs the session's token in its header.
    refused = await console.post("/billing/authenticate/start")
    assert refused.status_code == 403
    started = await start(console, page)
    assert started.status_code == 200, started.text
    body = started.json()
    assert body["payment_method"].startswith("pm_")
    await bank_answers(localstripe, body["client_secret"], success=True)

    done = await console.post("/billing/authenticate/confirmed", data={"csrf_token": csrf_of(page)})
    assert done.status_code == 303 and done.headers["location"].startswith("/payments?run=")
    payments = await console.get(done.headers["location"])
    assert "Payment confirmed with your bank." in payments.text
    run_id = done.headers["location"].split("=")[1]
    status = (await console.get(f"/payments/recharges/{run_id}")).json()
    assert (status["succeeded"], status["amount"], status["balance"]) == (True, "$25.00", "$124.00")
    row = await conn.fetchrow("SELECT balance, retry_tier FROM accounts WHERE id = $1", account)
    assert (row["balance"], row["retry_tier"]) == (Decimal("124"), 0)
    assert "Your bank needs you" not in (await console.get("/billing")).text
    # Posted again (a double click, a reload): the same run, no second credit.
    again = await console.post(
        "/billing/authenticate/confirmed", data={"csrf_token": csrf_of(page)}
    )
    assert again.headers["location"] == done.headers["location"]
    assert await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", account) == Decimal(
        "124"
    )
    # Nothing awaits now: the step is gone, and starting it again is refused in words.
    assert (await console.get("/billing/authenticate")).headers["location"] == "/billing"
    late = await start(console, page)
    assert late.status_code == 409 and "No payment is waiting" in late.json()["error"]
    # The client secret is the browser's alone: never in a log.
    text = log_lines.getvalue()
    assert "authentication.credited" in text
    assert body["client_secret"] not in text


async def test_a_refusal_by_the_bank_credits_nothing_and_says_so(
    app: FastAPI, console: httpx.AsyncClient, conn: Any, engine: Any, localstripe: Localstripe
) -> None:
    account = await awaiting(app, console, conn, engine, localstripe)
    page = (await console.get("/billing/authenticate")).text
    secret = (await start(console, page)).json()["client_secret"]
    await bank_answers(localstripe, secret, success=False)
    done = await console.post("/billing/authenticate/confirmed", data={"csrf_token": csrf_of(page)})
    assert done.headers["location"] == "/billing"
    assert NOT_CONFIRMED_TEXT in (await console.get("/billing")).text
    assert await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", account) == Decimal(
        "99"
    )


async def test_another_customer_can_neither_start_nor_settle_it(
    app: FastAPI, console: httpx.AsyncClient, conn: Any, engine: Any, localstripe: Localstripe
) -> None:
    account = await awaiting(app, console, conn, engine, localstripe)
    page = (await console.get("/billing/authenticate")).text
    secret = (await start(console, page)).json()["client_secret"]
    await bank_answers(localstripe, secret, success=True)
    async with client_for(app) as other:
        await customer(other, conn, balance="10")
        other_page = (await other.get("/billing")).text
        refused = await start(other, other_page)
        assert refused.status_code == 409
        done = await other.post(
            "/billing/authenticate/confirmed", data={"csrf_token": csrf_of(other_page)}
        )
        assert done.headers["location"] == "/billing"
    assert await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", account) == Decimal(
        "99"
    )
