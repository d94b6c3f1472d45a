"""The billing console in a real browser (Debian's Chromium, driven by Playwright) against the
real processes: the Procfile's web line, the relay and the balance, charge and retry workers.

The FAQ's journey: support issues credentials, the customer logs in, changes the temporary
password, adds a card, sets auto-recharge; usage published on the queue drives the balance
down and the recharge appears in the history without a reload. Then a declined card, a
suspended account brought back by a new card, an authentication-required recharge the customer
completes, and the pages at 390 px. Every page is saved as a screenshot (tests/e2e/browser.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import redis
from playwright.async_api import Browser, Page, expect

from common.broker.factory import build_broker
from common.broker.publish import usage_message
from common.credentials.logins import issue_temporary
from config.settings import Settings
from tests.e2e.browser import DESKTOP, PHONE, chromium, screenshots_dir
from tests.support import localstripe
from tests.support.factories import create_account, event, new_id
from tests.support.localstripe import free_port
from tests.support.procs import Proc, dramatiq_worker, relay, web, worker_env
from tests.support.session import NAMESPACE_PREFIX
from tests.support.waiting import until

pytestmark = pytest.mark.slow

PASSWORD = "Harbour-Lantern-Blue-42"
EXPIRY = "12 / 34"


@pytest.fixture(scope="module")
def sim_prefix() -> str:
    return f"test-simgw-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def namespace() -> str:
    """One dramatiq namespace for the module's processes (its keys go with the session's)."""
    return f"{NAMESPACE_PREFIX}-{uuid.uuid4().hex[:8]}"


# Every process of the module's stack, for the journey's look at their logs.
PROCS: list[Proc] = []


@pytest.fixture(scope="module")
def stack(namespace: str, sim_prefix: str, settings: Settings) -> Iterator[dict[str, str]]:
    """Every Procfile process, once for the module; yields the environment and the URL."""
    env = worker_env(
        namespace, CONTACTO_SIMULATED_PREFIX=sim_prefix, RETRY_MIN_INTERVAL_SECONDS="1"
    )
    port = free_port()
    with ExitStack() as stack:
        starters: list[Callable[[], Proc]] = [
            lambda: web(env, port, workers=1),
            lambda: relay(env),
            lambda: dramatiq_worker("workers.balance", "usage", env, threads=4),
            lambda: dramatiq_worker("workers.charge", "charges", env, threads=4),
            lambda: dramatiq_worker("workers.retry", "retries", env, threads=2),
        ]
        for start in starters:
            proc = start()
            PROCS.append(proc)
            stack.callback(proc.stop)
        yield {**env, "URL": f"http://127.0.0.1:{port}"}
        PROCS.clear()
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(match=f"{sim_prefix}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(screenshots_dir() / f"{name}.png"), full_page=True)


def publish_usage(namespace: str, account: str, amount: str) -> None:
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
    broker.enqueue(usage_message(event(account, amount)))
    broker.close()


async def account_row(conn: Any, account: str) -> Any:
    return await conn.fetchrow("SELECT * FROM accounts WHERE id = $1", account)


async def new_page(browser: Browser, url: str, viewport: dict[str, int] = DESKTOP) -> Page:
    context = await browser.new_context(viewport=viewport, base_url=url)  # type: ignore[arg-type]
    return await context.new_page()


async def first_login(
    page: Page, username: str, temporary: str, *, prefix: str, mistakes: bool = False
) -> None:
    await page.goto("/login")
    await shot(page, f"{prefix}-01-login")
    if mistakes:
        await page.get_by_label("Username").fill(username)
        await page.get_by_label("Password").fill("not-my-password")
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("alert")).to_have_text("Incorrect username or password.")
        await shot(page, f"{prefix}-01b-login-refused")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(temporary)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(re.compile(r"/billing/change-password$"))
    await shot(page, f"{prefix}-02-change-password")
    if mistakes:
        await page.get_by_label("Old password").fill(temporary)
        await page.get_by_label("New password", exact=True).fill("Password1234")
        await page.get_by_label("Confirm new password").fill("Password1234")
        await page.get_by_role("button", name="Save Changes").click()
        await expect(page.get_by_text("The new password is too common.")).to_be_visible()
        await shot(page, f"{prefix}-02b-change-password-refused")
    await page.get_by_label("Old password").fill(temporary)
    await page.get_by_label("New password", exact=True).fill(PASSWORD)
    await page.get_by_label("Confirm new password").fill(PASSWORD)
    await page.get_by_role("button", name="Save Changes").click()
    await expect(page).to_have_url(re.compile(r"/billing$"))
    await expect(page.get_by_text("Your password has been changed.")).to_be_visible()


async def add_card(page: Page, number: str) -> None:
    await page.goto("/billing")
    await page.get_by_label("Card number").fill(number)
    await page.get_by_label("Expiry").fill(EXPIRY)
    await page.get_by_label("CVC").fill("123")
    await page.get_by_role("button", name="Add New Card").click()
    await expect(page.get_by_text(f"•••• {number[-4:]}")).to_be_visible()


async def set_auto_recharge(page: Page, threshold: str, recharge: str) -> None:
    await page.goto("/payments")
    await page.get_by_label("Auto-recharge on").check()
    await page.get_by_label("Balance Amount", exact=True).fill(threshold)
    await page.get_by_label("Recharge Amount", exact=True).fill(recharge)
    await page.get_by_role("button", name="Save Changes").click()
    await expect(page.get_by_text("Auto-recharge is on.")).to_be_visible()


async def customer(conn: Any, balance: str, **extra: Any) -> tuple[str, str, str]:
    account = new_id("web")
    await create_account(conn, account, balance=balance, **extra)
    issued = await issue_temporary(conn, account)
    return account, issued.username, issued.password


async def test_the_faq_journey_in_chromium(
    browser: Browser, stack: dict[str, str], conn: Any, namespace: str
) -> None:
    account = new_id("journey")
    await create_account(conn, account, balance="150")
    # Support issues the one-time credentials, as the FAQ says, on the command line.
    issued = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "common.cli.main",
            "accounts",
            "credentials",
            "issue",
            account,
            "--json",
        ],
        env=stack,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    creds = json.loads(issued.stdout)
    page = await new_page(browser, stack["URL"])
    await first_login(
        page, creds["username"], creds["temporary_password"], prefix="journey", mistakes=True
    )
    await shot(page, "journey-03-billing-no-card")
    await add_card(page, "4242424242424242")
    await expect(page.get_by_text("Expires 12/34")).to_be_visible()
    await shot(page, "journey-04-billing-card")
    await set_auto_recharge(page, "100", "25")
    await shot(page, "journey-05-payments")
    row = await account_row(conn, account)
    assert (row["payment_method"], row["balance_amount"], row["recharge_amount"]) == (
        "pm_card_visa",
        100,
        25,
    )
    await page.goto("/history")
    await expect(page.get_by_text("Credit from support")).to_be_visible()
    # Usage on the queue: 150 - 60 = 90, below 100: one charge of 25 brings it to 115.
    publish_usage(namespace, account, "60")
    recharge = page.locator("tbody tr", has_text="Card recharge")
    await expect(recharge).to_be_visible(timeout=30_000)
    await expect(recharge).to_contain_text("+$25.00")
    await expect(recharge).to_contain_text("$115.00")
    await expect(page.locator("[data-balance]")).to_have_text("$115.00")
    await shot(page, "journey-06-history-live")
    # A manual recharge whose result appears without a reload.
    await page.goto("/payments")
    await page.get_by_label("Amount", exact=True).fill("30")
    await page.get_by_role("button", name="Recharge", exact=True).click()
    await expect(page.get_by_text("Recharged $30.00. Your balance is now $145.00.")).to_be_visible(
        timeout=30_000
    )
    await shot(page, "journey-07-manual-recharge")
    await page.goto("/history")
    await expect(page.locator("tbody tr", has_text="Paid")).to_have_count(2)
    await shot(page, "journey-08-history")
    # Neither password nor card number reached any process's log.
    logs = "".join(proc.output() for proc in PROCS)
    assert "console.logged_in" in logs and "console.card_added" in logs
    for secret in (
        creds["temporary_password"],
        PASSWORD,
        "4242424242424242",
        "4242 4242 4242 4242",
    ):
        assert secret not in logs, "a secret reached a log"


async def test_a_declined_card(browser: Browser, stack: dict[str, str], conn: Any) -> None:
    account, username, temporary = await customer(conn, "40")
    page = await new_page(browser, stack["URL"])
    await first_login(page, username, temporary, prefix="declined")
    await add_card(page, "4000000000000002")
    await page.goto("/payments")
    await page.get_by_label("Amount", exact=True).fill("25")
    await page.get_by_role("button", name="Recharge", exact=True).click()
    await expect(page.get_by_text("The recharge failed: Your card was declined.")).to_be_visible(
        timeout=30_000
    )
    await shot(page, "declined-01-payments")
    await page.goto("/history")
    await expect(page.locator("tbody tr", has_text="Declined")).to_contain_text(
        "Your card was declined."
    )
    await shot(page, "declined-02-history")
    assert (await account_row(conn, account))["balance"] == 40


async def test_a_suspended_account_sees_why_and_a_new_card_brings_it_back(
    browser: Browser, stack: dict[str, str], conn: Any
) -> None:
    account, username, temporary = await customer(
        conn,
        "-2",
        threshold="100",
        recharge="25",
        status="suspended",
        suspended_reason="ladder",
        tier=4,
        payment_method="pm_card_chargeDeclined",
    )
    page = await new_page(browser, stack["URL"])
    await first_login(page, username, temporary, prefix="suspended")
    await expect(page.get_by_text("Your account is suspended.")).to_be_visible()
    await expect(page.get_by_text("Add a card that works below")).to_be_visible()
    await shot(page, "suspended-01-billing")
    await add_card(page, "4242424242424242")
    await expect(page.get_by_text("We are charging it now")).to_be_visible()
    row = await until(
        lambda: account_row(conn, account),
        lambda r: r["status"] == "active" and r["retry_tier"] == 0,
        timeout_s=30,
        what="reactivated by the new card",
    )
    assert row["balance"] > 0
    await page.reload()
    await expect(page.get_by_text("Your account is suspended.")).to_have_count(0)
    await expect(page.get_by_text("Active", exact=True)).to_be_visible()
    await shot(page, "suspended-02-billing-active")


async def test_an_authentication_required_recharge_completed_by_the_customer(
    browser: Browser, stack: dict[str, str], conn: Any, namespace: str
) -> None:
    account, username, temporary = await customer(conn, "150")
    page = await new_page(browser, stack["URL"])
    await first_login(page, username, temporary, prefix="3ds")
    await add_card(page, "4000002500003155")
    await set_auto_recharge(page, "100", "25")
    publish_usage(namespace, account, "60")  # 90 < 100: the charge needs the customer
    await until(
        lambda: account_row(conn, account),
        lambda r: r["retry_tier"] == 1,
        timeout_s=30,
        what="the failed attempt counted",
    )
    await page.goto("/billing")
    await expect(page.get_by_text("Your bank needs you to confirm a payment")).to_be_visible()
    await shot(page, "3ds-01-billing")
    await page.get_by_role("link", name="Confirm payment").click()
    await shot(page, "3ds-02-confirm")
    await page.get_by_role("button", name="Complete payment").click()
    await expect(page.get_by_text("Recharged $25.00. Your balance is now $115.00.")).to_be_visible(
        timeout=30_000
    )
    await shot(page, "3ds-03-payments")
    row = await account_row(conn, account)
    assert (row["balance"], row["retry_tier"], row["status"]) == (115, 0, "active")


async def test_the_pages_fit_a_390px_phone(
    browser: Browser, stack: dict[str, str], conn: Any
) -> None:
    _, username, temporary = await customer(conn, "75.5")
    page = await new_page(browser, stack["URL"], PHONE)
    await first_login(page, username, temporary, prefix="phone")
    await add_card(page, "4242424242424242")
    for path in ("/billing", "/payments", "/history", "/billing/change-password"):
        await page.goto(path)
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 390 px"
        await shot(page, "phone-" + path.strip("/").replace("/", "-"))
    await page.goto("/billing")
    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    await shot(page, "phone-login")


async def test_with_stripe_the_card_goes_through_a_setup_intent_and_stripe_js(
    browser: Browser, conn: Any, settings: Settings
) -> None:
    """PAYMENT_GATEWAY=stripe against localstripe, whose Stripe.js double the page loads: the
    card is typed into Stripe's element, confirmed with Stripe, and only the SetupIntent's id
    reaches the web process, which puts its payment method on file."""
    with localstripe.run_localstripe() as ls:
        env = worker_env(
            f"{NAMESPACE_PREFIX}-{uuid.uuid4().hex[:8]}",
            PAYMENT_GATEWAY="stripe",
            STRIPE_API_KEY=ls.api_key,
            STRIPE_API_BASE=ls.api_base,
            STRIPE_PUBLISHABLE_KEY="pk_test_contacto_localstripe",
            CONTACTO_STRIPE_JS_URL=f"{ls.api_base}/js.stripe.com/v3/",
        )
        port = free_port()
        proc = web(env, port, workers=1)
        try:
            account, username, temporary = await customer(conn, "60")
            page = await new_page(browser, f"http://127.0.0.1:{port}")
            await first_login(page, username, temporary, prefix="stripe")
            element = page.locator("#card-element")
            await element.get_by_placeholder("number").fill("4242424242424242")
            await element.get_by_placeholder("exp_month").fill("12")
            await element.get_by_placeholder("exp_year").fill("34")
            await element.get_by_placeholder("cvc").fill("123")
            await element.get_by_placeholder("postal_code").fill("94107")
            await shot(page, "stripe-01-billing-elements")
            await page.get_by_role("button", name="Add New Card").click()
            await expect(page.get_by_text("•••• 4242")).to_be_visible(timeout=15_000)
            await shot(page, "stripe-02-billing-card")
            row = await account_row(conn, account)
            assert row["payment_method"].startswith("pm_")
            assert row["gateway_customer_id"].startswith("cus_")
            assert (row["card_brand"], row["card_last4"], row["card_exp_month"]) == (
                "visa",
                "4242",
                12,
            )
        finally:
            proc.stop()
        # The number never reached the web process, not even its log.
        assert "4242424242424242" not in proc.output()
