"""The billing console in process (httpx against the ASGI app): login, the forced password
change, sessions, CSRF, the limits on guessing, one account per customer, what the logs keep,
and the pages' operations on the same services as the CLI."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from common.accounts.support import credit_account
from common.credentials import passwords
from common.credentials.logins import MAX_FAILED_ATTEMPTS, issue_temporary
from common.gateway.simulated import SimulatedGateway, delete_state
from config.settings import Settings, WebSettings
from tests.support.factories import create_account, new_id
from tests.support.pipeline import debit, events
from web.app import create_app
from web.console.routes import COOKIE, GENERIC_LOGIN_ERROR, TOO_MANY

NEW = "Blue-Harbour-Lantern-42"
CARD = "4242424242424242"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found[1]


@pytest.fixture
async def app(test_settings: Settings, web_settings: WebSettings) -> AsyncIterator[FastAPI]:
    """The web app on a simulated gateway of its own: charge records of other tests (and of
    earlier sessions on the same Redis) must not meet this test's idempotency keys."""
    prefix = f"test-simgw-{uuid.uuid4().hex[:8]}"
    settings = test_settings.model_copy(update={"simulated_gateway_prefix": prefix})
    application = create_app(settings, web_settings)
    async with application.router.lifespan_context(application):
        yield application
        await delete_state(application.state.resources.redis, prefix)


@pytest.fixture
async def console(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as client:
        yield client


def client_for(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://console.test")


async def issue(conn: Any, balance: str = "50") -> tuple[str, str, str]:
    account = new_id()
    await create_account(conn, account, balance=balance)
    issued = await issue_temporary(conn, account)
    return account, issued.username, issued.password


async def log_in(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    page = await client.get("/login")
    return await client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf_of(page.text)},
    )


async def change(client: httpx.AsyncClient, old: str, new: str, confirm: str) -> httpx.Response:
    page = await client.get("/billing/change-password")
    form = {
        "old_password": old,
        "new_password": new,
        "confirm_password": confirm,
        "csrf_token": csrf_of(page.text),
    }
    return await client.post("/billing/change-password", data=form)


async def customer(client: httpx.AsyncClient, conn: Any, balance: str = "50") -> str:
    """A customer logged in with their own password (the temporary one changed)."""
    account, username, temporary = await issue(conn, balance)
    assert (await log_in(client, username, temporary)).status_code == 303
    assert (await change(client, temporary, NEW, NEW)).headers["location"] == "/billing"
    return account


async def post_form(client: httpx.AsyncClient, page: str, action: str, **data: str) -> Any:
    html = (await client.get(page)).text
    return await client.post(action, data={**data, "csrf_token": csrf_of(html)})


# --- login and the forced change ----------------------------------------------------------------


async def test_temporary_password_leads_to_change_password_and_nothing_else(
    console: httpx.AsyncClient, conn: Any
) -> None:
    account, username, temporary = await issue(conn)
    page = await console.get("/login")
    assert all(label in page.text for label in ("Username", "Password", "Log in"))
    answer = await log_in(console, username, temporary)
    assert (answer.status_code, answer.headers["location"]) == (303, "/billing/change-password")
    for path in ("/billing", "/payments", "/history", "/history.csv", "/billing/authenticate"):
        blocked = await console.get(path)
        assert (blocked.status_code, blocked.headers["location"]) == (
            303,
            "/billing/change-password",
        ), path
    form = await console.get("/billing/change-password")
    for label in ("Old password", "New password", "Confirm new password", "Save Changes"):
        assert label in form.text
    weak = await change(console, temporary, "short1", "short1")
    assert (
        weak.status_code == 422 and "The new password must be at least 12 characters." in weak.text
    )
    mismatch = await change(console, temporary, NEW, NEW + "x")
    assert "The two new passwords do not match." in mismatch.text
    done = await change(console, temporary, NEW, NEW)
    assert done.headers["location"] == "/billing"
    billing = await console.get("/billing")
    assert billing.status_code == 200
    assert "$50.00" in billing.text and "Add New Card" in billing.text and account in billing.text
    assert "Your password has been changed." in billing.text
    assert "Your password has been changed." not in (await console.get("/billing")).text


async def test_unknown_username_and_wrong_password_get_the_same_answer(
    console: httpx.AsyncClient, conn: Any
) -> None:
    _, username, _ = await issue(conn)
    wrong = await log_in(console, username, "Not-The-Password-1")
    unknown = await log_in(console, "billing-" + new_id(), "Not-The-Password-1")
    nonsense = await log_in(console, "someone@example.com", "Not-The-Password-1")

    def notice(html: str) -> str:
        found = re.search(r'role="alert">([^<]*)<', html)
        assert found
        return found[1]

    assert wrong.status_code == unknown.status_code == nonsense.status_code == 401
    assert notice(wrong.text) == notice(unknown.text) == notice(nonsense.text)
    assert notice(wrong.text) == GENERIC_LOGIN_ERROR


async def test_session_id_changes_at_login_and_a_planted_id_is_worthless(
    app: FastAPI, console: httpx.AsyncClient, conn: Any
) -> None:
    _, username, temporary = await issue(conn)
    await console.get("/login")
    planted = console.cookies[COOKIE]
    await log_in(console, username, temporary)
    after_login = console.cookies[COOKIE]
    assert after_login != planted
    await change(console, temporary, NEW, NEW)
    after_change = console.cookies[COOKIE]
    assert after_change not in (planted, after_login)
    assert (await console.get("/billing")).status_code == 200
    # The attacker who planted (or saw) an earlier id holds nothing.
    async with client_for(app) as attacker:
        for stale in (planted, after_login):
            attacker.cookies.set(COOKIE, stale)
            answer = await attacker.get("/billing")
            assert (answer.status_code, answer.headers["location"]) == (303, "/login")


async def test_cookie_is_httponly_and_lax_and_pages_carry_security_headers(
    console: httpx.AsyncClient,
) -> None:
    page = await console.get("/login")
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    # The JSON API keeps its own headers.
    assert "content-security-policy" not in (await console.get("/healthz")).headers


async def test_behind_https_the_cookie_is_secure_and_host_only(
    test_settings: Settings,
) -> None:
    app = create_app(test_settings, WebSettings(CONTACTO_CONSOLE_SECURE_COOKIE=True))
    async with app.router.lifespan_context(app), client_for(app) as client:
        cookie = (await client.get("/login")).headers["set-cookie"]
    assert cookie.startswith("__Host-contacto_session=") and "Secure" in cookie


# --- CSRF ---------------------------------------------------------------------------------------


async def test_forms_without_the_session_token_are_refused(
    console: httpx.AsyncClient, conn: Any
) -> None:
    _, username, temporary = await issue(conn)
    await console.get("/login")
    no_token = await console.post("/login", data={"username": username, "password": temporary})
    assert no_token.status_code == 403
    forged = await console.post(
        "/login", data={"username": username, "password": temporary, "csrf_token": "x" * 43}
    )
    assert forged.status_code == 403
    await customer(console, conn)
    posts = {
        "/payments/auto-recharge": {
            "enabled": "on",
            "balance_amount": "100",
            "recharge_amount": "25",
        },
        "/payments/alert": {"alert_level": "10"},
        "/payments/recharge": {"amount": "25"},
        "/billing/card": {"card_number": CARD, "expiry": "12/40", "cvc": "123"},
        "/billing/change-password": {
            "old_password": NEW,
            "new_password": NEW + "!",
            "confirm_password": NEW + "!",
        },
        "/logout": {},
    }
    for path, data in posts.items():
        refused = await console.post(path, data={**data, "csrf_token": "forged"})
        assert refused.status_code == 403, path
    scripted = await console.post(
        "/payments/recharge", data={"amount": "25"}, headers={"X-CSRF-Token": "forged"}
    )
    assert scripted.status_code == 403
    # Nothing happened: still logged in, auto-recharge still off.
    assert "Auto-recharge is off" in (await console.get("/billing")).text


# --- guessing limits ----------------------------------------------------------------------------


async def test_account_lockout_refuses_even_the_right_password(
    console: httpx.AsyncClient, conn: Any
) -> None:
    _, username, temporary = await issue(conn)
    for _ in range(MAX_FAILED_ATTEMPTS):
        assert (await log_in(console, username, "Wrong-Password-99")).status_code == 401
    locked = await log_in(console, username, temporary)
    assert locked.status_code == 429 and TOO_MANY in locked.text


async def test_an_unknown_username_locks_like_a_real_one(
    console: httpx.AsyncClient, conn: Any
) -> None:
    _, real, _ = await issue(conn)
    ghost = "billing-" + new_id()
    answers: dict[str, list[int]] = {real: [], ghost: []}
    for username in (real, ghost):
        for _ in range(MAX_FAILED_ATTEMPTS + 1):
            answers[username].append(
                (await log_in(console, username, "Wrong-Guess-99")).status_code
            )
    assert answers[real] == answers[ghost] == [401] * MAX_FAILED_ATTEMPTS + [429]


async def test_one_address_is_limited_across_usernames(test_settings: Settings, conn: Any) -> None:
    web = WebSettings(CONTACTO_CONSOLE_ADDRESS_MAX_FAILURES=3)
    app = create_app(test_settings, web)
    _, username, temporary = await issue(conn)
    async with app.router.lifespan_context(app), client_for(app) as client:
        for _ in range(3):
            unknown = await log_in(client, "billing-" + new_id(), "Some-Guess-123")
            assert unknown.status_code == 401
        throttled = await log_in(client, username, temporary)
        assert throttled.status_code == 429 and TOO_MANY in throttled.text
        # Another address is not held back by this one.
        other = httpx.ASGITransport(app=app, client=("198.51.100.9", 40000))
        async with httpx.AsyncClient(transport=other, base_url="http://console.test") as c2:
            assert (await log_in(c2, username, temporary)).status_code == 303


# --- sessions end -------------------------------------------------------------------------------


async def test_a_password_change_ends_every_other_session(
    app: FastAPI, console: httpx.AsyncClient, conn: Any
) -> None:
    account = await customer(console, conn)
    async with client_for(app) as laptop:
        assert (await log_in(laptop, "billing-" + account, NEW)).headers["location"] == "/billing"
        assert (await laptop.get("/billing")).status_code == 200
        assert (await change(console, NEW, NEW + "-2", NEW + "-2")).status_code == 303
        ended = await laptop.get("/billing")
        assert (ended.status_code, ended.headers["location"]) == (303, "/login")
    assert (await console.get("/billing")).status_code == 200


async def test_logout_ends_the_session(console: httpx.AsyncClient, conn: Any) -> None:
    await customer(console, conn)
    cookie = console.cookies[COOKIE]
    answer = await post_form(console, "/billing", "/logout")
    assert answer.headers["location"] == "/login"
    console.cookies.set(COOKIE, cookie)
    assert (await console.get("/billing")).headers["location"] == "/login"


async def test_a_mistyped_console_address_gets_a_page_and_the_api_keeps_its_json(
    console: httpx.AsyncClient,
) -> None:
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    page = await console.get("/bililng", headers=html)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Page not found" in page.text
    for path, headers in (("/bililng", {"Accept": "*/*"}), ("/v1/nope", html)):
        answer = await console.get(path, headers=headers)
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"


# --- one account per customer -------------------------------------------------------------------


async def test_a_customer_reaches_only_their_own_account(
    app: FastAPI, console: httpx.AsyncClient, conn: Any
) -> None:
    mine = await customer(console, conn, balance="50")
    async with client_for(app) as other_client:
        theirs = await customer(other_client, conn, balance="777")
        await post_form(
            other_client, "/billing", "/billing/card", card_number=CARD, expiry="12/40", cvc="123"
        )
        started = await other_client.post(
            "/payments/recharge",
            data={"amount": "25"},
            headers={"X-CSRF-Token": csrf_of((await other_client.get("/payments")).text)},
        )
        their_run = started.json()["run_id"]
    for path in ("/billing", "/payments", "/history", "/history.csv", "/history/entries?after=0"):
        page = await console.get(path)
        assert page.status_code == 200, path
        assert theirs not in page.text and "777" not in page.text, path
    assert mine in (await console.get("/billing")).text
    # A run of theirs is as unknown as one that does not exist; query strings name no account.
    assert (await console.get(f"/payments/recharges/{their_run}")).status_code == 404
    assert (await console.get("/payments/recharges/999999999")).status_code == 404
    sneaky = await console.get(f"/billing?account_id={theirs}")
    assert theirs not in sneaky.text
    payments = await console.get(f"/payments?run={their_run}")
    assert theirs not in payments.text
    # The anonymous get nothing at all.
    async with client_for(app) as anonymous:
        for path in (
            "/billing",
            "/payments",
            "/history",
            "/history.csv",
            f"/payments/recharges/{their_run}",
        ):
            assert (await anonymous.get(path)).headers["location"] == "/login", path


# --- what the logs keep -------------------------------------------------------------------------


async def test_no_password_or_card_number_reaches_a_log(
    console: httpx.AsyncClient, conn: Any, log_lines: io.StringIO
) -> None:
    _, username, temporary = await issue(conn)
    await log_in(console, username, "Wrong-Guess-Password-7")
    await log_in(console, username, temporary)
    await change(console, temporary, "weak", "weak")
    await change(console, temporary, NEW, NEW)
    await post_form(
        console,
        "/billing",
        "/billing/card",
        card_number="4242 4242 4242 4241",
        expiry="12/40",
        cvc="987",
    )
    await post_form(
        console, "/billing", "/billing/card", card_number=CARD, expiry="12/40", cvc="987"
    )
    text = log_lines.getvalue()
    assert "console.card_added" in text and "credentials.password_changed" in text
    for secret in (temporary, NEW, "Wrong-Guess-Password-7", CARD, "4242 4242 4242 4241", '"987"'):
        assert secret not in text, secret
    assert all(json.loads(line) for line in text.splitlines())


# --- the hash upgrade ---------------------------------------------------------------------------


async def test_console_login_upgrades_an_scrypt_hash_to_argon2id(
    app: FastAPI, console: httpx.AsyncClient, conn: Any
) -> None:
    account = await customer(console, conn)
    await conn.execute(
        "UPDATE billing_logins SET password_hash = $2 WHERE account_id = $1",
        account,
        passwords.hash_scrypt(NEW),
    )
    async with client_for(app) as again:
        assert (await log_in(again, "billing-" + account, NEW)).headers["location"] == "/billing"
    stored = await conn.fetchval(
        "SELECT password_hash FROM billing_logins WHERE account_id = $1", account
    )
    assert stored.startswith("$argon2id$") and passwords.verify_password(NEW, stored)


# --- the pages' operations ----------------------------------------------------------------------


async def test_card_auto_recharge_and_manual_recharge(
    console: httpx.AsyncClient, conn: Any
) -> None:
    account = await customer(console, conn, balance="50")
    bad = await post_form(
        console,
        "/billing",
        "/billing/card",
        card_number="4242424242424241",
        expiry="12/40",
        cvc="123",
    )
    assert bad.status_code == 422 and "This card number is not valid." in bad.text
    added = await post_form(
        console, "/billing", "/billing/card", card_number=CARD, expiry="12/40", cvc="123"
    )
    assert added.headers["location"] == "/billing"
    billing = (await console.get("/billing")).text
    assert "Visa" in billing and "•••• 4242" in billing and "Expires 12/40" in billing
    row = await conn.fetchrow("SELECT * FROM accounts WHERE id = $1", account)
    assert (row["payment_method"], row["card_last4"], row["card_exp_year"]) == (
        "pm_card_visa",
        "4242",
        2040,
    )

    payments = await console.get("/payments")
    for label in (
        "Balance Amount",
        "Recharge Amount",
        "Save Changes",
        "the minimum recharge is 25",
        "contact support",
    ):
        assert label in payments.text
    low = await post_form(
        console,
        "/payments",
        "/payments/auto-recharge",
        enabled="on",
        balance_amount="100",
        recharge_amount="20",
        mode="repeat",
    )
    assert low.status_code == 422 and "The minimum recharge is 25." in low.text
    high = await post_form(
        console,
        "/payments",
        "/payments/auto-recharge",
        enabled="on",
        balance_amount="100",
        recharge_amount="20000",
        mode="repeat",
    )
    assert high.status_code == 422
    assert (
        "The maximum recharge is 10,000. To recharge more than the maximum, contact support."
        in high.text
    )
    saved = await post_form(
        console,
        "/payments",
        "/payments/auto-recharge",
        enabled="on",
        balance_amount="40",
        recharge_amount="25",
        mode="repeat",
    )
    assert saved.headers["location"] == "/payments"
    row = await conn.fetchrow("SELECT * FROM accounts WHERE id = $1", account)
    assert (row["auto_recharge_enabled"], row["balance_amount"], row["recharge_amount"]) == (
        True,
        40,
        25,
    )

    csrf = csrf_of((await console.get("/payments")).text)
    started = await console.post(
        "/payments/recharge", data={"amount": "30"}, headers={"X-CSRF-Token": csrf}
    )
    assert started.status_code == 202
    status = await console.get(f"/payments/recharges/{started.json()['run_id']}")
    assert status.json()["state"] == "pending" and status.json()["balance"] == "$50.00"
    too_small = await console.post(
        "/payments/recharge", data={"amount": "5"}, headers={"X-CSRF-Token": csrf}
    )
    assert too_small.status_code == 422


async def test_history_pages_and_csv(console: httpx.AsyncClient, conn: Any, engine: Any) -> None:
    account = await customer(console, conn, balance="100")
    for _ in range(30):
        await debit(engine, account, "1.5")
    first = await console.get("/history")
    assert first.text.count("Usage") == 25 and "Older" in first.text
    assert "$55.00" in first.text  # the running balance after the last of the thirty debits
    older = re.search(r'href="(/history\?before=\d+)"', first.text)
    assert older
    second = await console.get(older[1])
    assert second.text.count("Usage") == 5
    live = (await console.get("/history/entries?after=0")).json()
    assert len(live["entries"]) == 25 and live["balance"] == "$55.00"
    csv_text = (await console.get("/history.csv")).text
    lines = csv_text.strip().splitlines()
    assert (
        lines[0] == "id,date,kind,amount,balance_after,reference" and len(lines) == 32
    )  # the opening credit, thirty debits
    assert lines[-1].split(",")[3:5] == ["-1.50", "55.00"]


async def test_csv_cells_never_become_formulas(
    console: httpx.AsyncClient, conn: Any, engine: Any
) -> None:
    account = await customer(console, conn, balance="10")
    await credit_account(conn, account, Decimal("1"), "goodwill", reference="=HYPERLINK(1)")
    rows = (await console.get("/history.csv")).text.strip().splitlines()
    assert rows[-1].endswith(",'=HYPERLINK(1)")


async def test_crossing_the_alert_level_emits_balance_low_once(
    console: httpx.AsyncClient, conn: Any, engine: Any
) -> None:
    account = await customer(console, conn, balance="100")
    saved = await post_form(console, "/payments", "/payments/alert", alert_level="50")
    assert saved.headers["location"] == "/payments"
    for _ in range(3):
        await debit(engine, account, "20")  # 80, 60, 40: the third crosses 50
    await debit(engine, account, "5")
    lows = [data for kind, data in await events(conn, account) if kind == "balance.low"]
    assert len(lows) == 1 and Decimal(lows[0]["balance"]) == 40
    await credit_account(conn, account, Decimal("5"), "goodwill")  # 40: still below, not re-armed
    await debit(engine, account, "1")
    lows = [data for kind, data in await events(conn, account) if kind == "balance.low"]
    assert len(lows) == 1
    await credit_account(conn, account, Decimal("31"), "goodwill")  # 70: re-armed
    await debit(engine, account, "25")  # 45: a second crossing
    lows = [data for kind, data in await events(conn, account) if kind == "balance.low"]
    assert len(lows) == 2


async def test_authentication_required_is_completed_by_the_customer(
    app: FastAPI, console: httpx.AsyncClient, conn: Any, engine: Any
) -> None:
    from tests.support.pipeline import settle

    account = await customer(console, conn, balance="50")
    await post_form(
        console,
        "/billing",
        "/billing/card",
        card_number="4000002500003155",
        expiry="12/40",
        cvc="123",
    )
    await post_form(
        console,
        "/payments",
        "/payments/auto-recharge",
        enabled="on",
        balance_amount="40",
        recharge_amount="25",
        mode="repeat",
    )
    sim = app.state.resources.gateway()
    assert isinstance(sim, SimulatedGateway)
    await debit(engine, account, "20")  # 30 < 40: an automatic recharge, which needs the customer
    await settle(engine, sim, account)
    billing = await console.get("/billing")
    assert "Your bank needs you to confirm a payment" in billing.text
    step = await console.get("/billing/authenticate")
    assert "Complete payment" in step.text and "$25.00" in step.text
    done = await console.post(
        "/billing/authenticate", data={"decision": "complete", "csrf_token": csrf_of(step.text)}
    )
    assert done.headers["location"].startswith("/payments?run=")
    await settle(engine, sim, account)
    row = await conn.fetchrow("SELECT balance, retry_tier FROM accounts WHERE id = $1", account)
    assert (row["balance"], row["retry_tier"]) == (55, 0)
    assert "Your bank needs you" not in (await console.get("/billing")).text
