"""The console's 3-D Secure step with PAYMENT_GATEWAY=stripe in a real browser (Debian's
Chromium, Playwright) against localstripe and the real processes: the web process, the relay (its
sweep) and the charge and retry workers, all on Stripe.

A module of its own: its processes share the session's database (its outbox) with any other
module's stack, and a relay of test_console_browser.py's simulated stack, still up until that
module ends, would publish this test's run to a charge worker on the simulated gateway.
Screenshots, helpers and the browser are test_console_browser.py's.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from tests.e2e.browser import chromium
from tests.e2e.test_console_browser import (
    PASSWORD,
    account_row,
    customer,
    first_login,
    new_page,
    set_auto_recharge,
    shot,
)
from tests.support import localstripe
from tests.support.localstripe import free_port
from tests.support.pipeline import debit
from tests.support.procs import Proc, dramatiq_worker, relay, web, worker_env
from tests.support.session import NAMESPACE_PREFIX
from tests.support.waiting import until

pytestmark = pytest.mark.slow


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def test_with_stripe_an_authentication_required_recharge_is_confirmed_with_stripe_js(
    browser: Browser, conn: Any, engine: Any
) -> None:
    """PAYMENT_GATEWAY=stripe against localstripe, the whole pipeline: the automatic recharge of
    a 3-D Secure card fails off-session (charge worker) and is counted (retry worker); the
    customer confirms the PaymentIntent with Stripe.js (localstripe's double opens its bank
    dialog), the web process credits it once. Then a customer whose browser never reports back:
    the relay's sweep credits the payment Stripe took."""
    with localstripe.run_localstripe() as ls:
        env = worker_env(
            f"{NAMESPACE_PREFIX}-{uuid.uuid4().hex[:8]}",
            PAYMENT_GATEWAY="stripe",
            STRIPE_API_KEY=ls.api_key,
            STRIPE_API_BASE=ls.api_base,
            STRIPE_PUBLISHABLE_KEY="pk_test_contacto_localstripe",
            CONTACTO_STRIPE_JS_URL=f"{ls.api_base}/js.stripe.com/v3/",
            # The sweep looks at a confirmation nobody reported after 3 s, every second.
            CONTACTO_AUTHENTICATION_SWEEP_AFTER_S="3",
            CONTACTO_RECONCILE_INTERVAL_S="1",
        )
        port = free_port()
        procs: list[Proc] = []
        try:
            starters: list[Callable[[], Proc]] = [
                lambda: web(env, port, workers=1),
                lambda: relay(env),
                lambda: dramatiq_worker("workers.charge", "charges", env, threads=2),
                lambda: dramatiq_worker("workers.retry", "retries", env, threads=2),
            ]
            for start in starters:
                procs.append(start())
            url = f"http://127.0.0.1:{port}"
            secrets = [
                await _stripe_3ds_journey(browser, conn, engine, ls, url, reports=True),
                await _stripe_3ds_journey(browser, conn, engine, ls, url, reports=False),
            ]
        finally:
            for proc in procs:
                proc.stop()
    # The second customer's payment was credited by the relay's sweep, not by a browser.
    assert "authentication.swept" in procs[1].output()
    # The client secret went to the browser only: no process logged it.
    for proc in procs:
        for secret in secrets:
            assert secret not in proc.output()


async def _stripe_3ds_journey(
    browser: Browser, conn: Any, engine: Any, ls: Any, url: str, *, reports: bool
) -> str:
    """One customer through the 3-D Secure step; returns the intent's client secret."""
    prefix = "stripe-3ds" if reports else "stripe-3ds-closed"
    account, username, temporary = await customer(conn, "150")
    page = await new_page(browser, url)
    await first_login(page, username, temporary, prefix=prefix)
    element = page.locator("#card-element")
    await element.get_by_placeholder("number").fill("4000002500003155")
    await element.get_by_placeholder("exp_month").fill("12")
    await element.get_by_placeholder("exp_year").fill("34")
    await element.get_by_placeholder("cvc").fill("123")
    await element.get_by_placeholder("postal_code").fill("94107")
    await page.get_by_role("button", name="Add New Card").click()
    # Saving a 3-D Secure card asks the bank too: localstripe's dialog.
    await page.get_by_role("button", name="Complete authentication").click()
    await expect(page.get_by_text("•••• 3155")).to_be_visible(timeout=15_000)
    await set_auto_recharge(page, "100", "25")
    await debit(engine, account, "60")  # 90 < 100: the automatic recharge needs the customer
    await until(
        lambda: account_row(conn, account),
        lambda r: r["retry_tier"] == 1,
        timeout_s=30,
        what="the failed attempt counted",
    )
    await page.goto("/billing")
    await expect(page.get_by_text("Your bank needs you to confirm a payment")).to_be_visible()
    await shot(page, f"{prefix}-01-billing")
    await page.get_by_role("link", name="Confirm payment").click()
    await shot(page, f"{prefix}-02-confirm")
    if not reports:
        # The tab "closes" once the bank said yes: its report never reaches the server.
        await page.route("**/billing/authenticate/confirmed", lambda route: route.abort())
    await page.get_by_role("button", name="Complete payment").click()
    bank = page.get_by_role("button", name="Complete authentication")
    await expect(bank).to_be_visible(timeout=15_000)
    await shot(page, f"{prefix}-03-bank")
    await bank.click()
    if reports:
        await expect(
            page.get_by_text("Recharged $25.00. Your balance is now $115.00.")
        ).to_be_visible(timeout=30_000)
        await expect(page.get_by_text("Payment confirmed with your bank.")).to_be_visible()
        await shot(page, f"{prefix}-04-payments")
    else:
        await until(
            lambda: account_row(conn, account),
            lambda r: r["balance"] == 115,
            timeout_s=30,
            what="the sweep crediting the unreported payment",
        )
        page = await new_page(browser, url)
        await page.goto("/login")
        await page.get_by_label("Username").fill(username)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_text("Your bank needs you to confirm a payment")).to_have_count(0)
        await expect(page.locator("[data-balance]").first).to_have_text("$115.00")
        await shot(page, f"{prefix}-04-billing")
    row = await account_row(conn, account)
    assert (row["balance"], row["retry_tier"], row["status"]) == (115, 0, "active")
    credits = await conn.fetchval(
        "SELECT count(*) FROM ledger_entries WHERE account_id = $1 AND kind = 'recharge'", account
    )
    assert credits == 1
    intent = await conn.fetchval(
        "SELECT payment_intent FROM charge_authentications WHERE account_id = $1", account
    )
    return await asyncio.to_thread(_client_secret, ls, intent)


def _client_secret(ls: Any, intent: str) -> str:
    request = urllib.request.Request(
        f"{ls.api_base}/v1/payment_intents/{intent}",
        headers={"Authorization": f"Bearer {ls.api_key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        secret: str = json.loads(response.read())["client_secret"]
    return secret
