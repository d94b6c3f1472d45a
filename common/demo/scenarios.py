"""The demo's scenarios, played against the running Procfile processes.

1. The billing FAQ's example: balance 100, auto-recharge below 100 by 20, one spend of 90:
   five charges of 20, balance 110.
2. A declining card walking the 75/50/25/0 % ladder down to suspension, then a new card:
   reactivation and recharges back above the threshold.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

import asyncpg
import dramatiq
import httpx

from common.accounts.support import create_account, credit_account
from common.broker.publish import usage_message
from common.credentials.logins import issue_temporary
from common.credentials.tokens import create_token
from common.demo.procs import Honcho
from common.demo.services import DemoError
from common.demo.timeline import Timeline, money
from common.gateway import PaymentGateway
from common.recharge.settings import attach_card, set_auto_recharge
from config.settings import Settings

T = Decimal(100)  # the FAQ's Balance Amount
R = Decimal(20)  # the FAQ's Recharge Amount
FAQ, LADDER = "faq", "ladder"
# Each debit crosses the next level: 90 (< T), 70 (<= 75 %), 40 (<= 50 %), 10 (<= 25 %), -10.
LADDER_DEBITS = ("10", "20", "30", "30", "20")


@dataclass
class Stage:
    conn: asyncpg.Connection[Any]
    broker: dramatiq.Broker
    gateway: PaymentGateway
    settings: Settings
    timeline: Timeline
    honcho: Honcho
    out: TextIO
    step_timeout_s: float
    sent: int = 0

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def send_usage(self, account: str, amount: str) -> None:
        """What the upstream platform does: a `record_usage` message on queue `usage`."""
        self.sent += 1
        event = {
            "event_id": f"demo-{account}-{self.sent}",
            "account_id": account,
            "amount": amount,
            "currency": "USD",
            "occurred_at": datetime.now(UTC).isoformat(),
            "kind": "voice",
        }
        self.broker.enqueue(usage_message(event))

    async def wait_for(self, what: str, done: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + self.step_timeout_s
        while not await done():
            await self.timeline.pump()
            if not self.honcho.alive():
                raise DemoError(f"the processes stopped while waiting for {what}:\n"
                                + self.honcho.tail())  # fmt: skip
            if time.monotonic() > deadline:
                raise DemoError(
                    f"timed out after {self.step_timeout_s:g}s waiting for {what}\n"
                    + self.honcho.tail()
                )
            await asyncio.sleep(0.1)
        await self.settle()

    async def settle(self) -> None:
        """Print everything up to now: wait until the relay published every committed event."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and await self.conn.fetchval(
            "SELECT count(*) FROM outbox WHERE destination = 'stream' AND sent_at IS NULL"
        ):
            await self.timeline.pump()
            await asyncio.sleep(0.05)
        await self.timeline.pump(flush=True)

    async def account(self, account: str) -> asyncpg.Record:
        row = await self.conn.fetchrow(
            "SELECT balance, status, retry_tier FROM accounts WHERE id = $1", account
        )
        assert row is not None
        return row

    async def last_run_state(self, account: str) -> str | None:
        state: str | None = await self.conn.fetchval(
            "SELECT state FROM recharge_runs WHERE account_id = $1 ORDER BY id DESC LIMIT 1",
            account,
        )
        return state

    async def open_account(self, account: str, card: str) -> None:
        """The CLI's code paths: accounts create, card, credit, auto-recharge."""
        await create_account(self.conn, account, "USD")
        await attach_card(self.conn, self.gateway, account, card, self.settings)
        await credit_account(
            self.conn, account, T, "opening balance", reference=f"opening-{account}"
        )
        await set_auto_recharge(
            self.conn, account, self.settings, balance_amount=T, recharge_amount=R
        )
        await self.settle()
        self.timeline.note(account, f"card {card}; auto-recharge below {money(T)} by {money(R)}")


async def faq_example(stage: Stage) -> None:
    stage.say("\n== 1. The FAQ example: balance 100, auto-recharge below 100 by 20, spend 90 ==")
    await stage.open_account(FAQ, "pm_card_visa")
    stage.timeline.note(FAQ, "upstream sends one usage event of 90.00 (queue usage)")
    stage.send_usage(FAQ, "90")

    async def done() -> bool:
        return await stage.last_run_state(FAQ) == "succeeded"

    await stage.wait_for("the FAQ account's recharge run", done)


async def declining_card_ladder(stage: Stage) -> None:
    interval = stage.settings.retry_min_interval_s
    stage.say("\n== 2. A declining card: the 75/50/25/0 % ladder, suspension, a new card ==")
    await stage.open_account(LADDER, "pm_card_chargeDeclined")
    stage.timeline.note(
        LADDER,
        "usage 10, 20, 30, 30, 20 walks the balance 90, 70, 40, 10, -10; each failed attempt "
        f"waits {interval:g} s before the next",
    )
    for number, amount in enumerate(LADDER_DEBITS, start=1):
        stage.send_usage(LADDER, amount)
        if number < len(LADDER_DEBITS):

            async def armed(tier: int = number) -> bool:
                return int((await stage.account(LADDER))["retry_tier"]) >= tier

            await stage.wait_for(f"tier {number} to be armed", armed)
        else:

            async def suspended() -> bool:
                return bool((await stage.account(LADDER))["status"] == "suspended")

            await stage.wait_for("the suspension", suspended)

    stage.timeline.note(
        LADDER, "support attaches a new card: accounts card ladder --payment-method pm_card_visa"
    )
    result = await attach_card(stage.conn, stage.gateway, LADDER, "pm_card_visa", stage.settings)
    if result.attempt_run_id is None:
        raise DemoError("attaching the new card started no recharge attempt")

    async def recovered() -> bool:
        row = await stage.account(LADDER)
        state = await stage.last_run_state(LADDER)
        return row["status"] == "active" and state in ("succeeded", "capped", "failed")

    await stage.wait_for("the reactivation and the recharges", recovered)


async def summary(stage: Stage, accounts: list[str]) -> bool:
    """Final balances, charges, and the audit: balance == sum(ledger) for each account."""
    rows = await stage.conn.fetch(
        """
        SELECT a.id, a.balance, a.status, a.retry_tier,
               (SELECT coalesce(sum(amount), 0) FROM ledger_entries l
                WHERE l.account_id = a.id) AS ledger_sum,
               (SELECT count(*) FROM charges c
                WHERE c.account_id = a.id AND c.status = 'succeeded') AS succeeded,
               (SELECT count(*) FROM charges c
                WHERE c.account_id = a.id AND c.status = 'failed') AS failed
        FROM accounts a WHERE a.id = ANY($1) ORDER BY a.created_at
        """,
        accounts,
    )
    stage.say("\n== Summary ==")
    for r in rows:
        stage.say(
            f"  {r['id']:<7} balance {money(r['balance']):>7}  {r['status']:<9} "
            f"tier {r['retry_tier']}  charges: {r['succeeded']} succeeded, {r['failed']} failed"
        )
    ok = bool(rows) and all(r["balance"] == r["ledger_sum"] for r in rows)
    checked = ", ".join(f"{r['id']} {money(r['ledger_sum'])}" for r in rows)
    if ok:
        stage.say(f"  audit OK: balance == sum(ledger) for every account ({checked})")
    else:
        bad = ", ".join(
            f"{r['id']} balance {money(r['balance'])} != ledger {money(r['ledger_sum'])}"
            for r in rows
            if r["balance"] != r["ledger_sum"]
        )
        stage.say(f"  audit FAILED: {bad or 'no accounts'}")
    faq = next((r for r in rows if r["id"] == FAQ), None)
    if faq is not None:
        as_faq = bool(faq["succeeded"] == 5 and faq["balance"] == Decimal(110))
        stage.say(
            f"  FAQ: {faq['succeeded']} charges of {money(R)}, balance {money(faq['balance'])}"
            + (" - as the FAQ describes" if as_faq else " - NOT what the FAQ describes")
        )
        ok = ok and as_faq
    return ok


async def api_access(stage: Stage, account: str) -> None:
    """The `web` process's URL and a token for it (created now, shown once), proven by one
    call of the account API."""
    url = f"http://{os.environ.get('WEB_HOST', '127.0.0.1')}:{os.environ['PORT']}"
    issued = await create_token(stage.conn, "demo")
    stage.say("\n== The account API (web) ==")
    stage.say(f"  URL          {url}  (OpenAPI: {url}/openapi.json)")
    stage.say(f"  token        {issued.token}  (api-tokens create demo: shown once)")
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.get(
            f"/v1/accounts/{account}", headers={"Authorization": f"Bearer {issued.token}"}
        )
    if response.status_code == 200:
        state = response.json()
        stage.say(
            f"  GET /v1/accounts/{account} -> 200: balance {state['balance']}, {state['status']}"
        )
    else:
        stage.say(f"  GET /v1/accounts/{account} -> {response.status_code}: {response.text[:200]}")
    stage.say(f'  curl -H "Authorization: Bearer {issued.token}" {url}/v1/accounts/{account}')


CUSTOMER = "demo-customer"


async def console_access(stage: Stage, *, keeps_running: bool) -> None:
    """A customer of the console (web/console/): an account with some money and the one-time
    credentials support would issue (`accounts credentials issue`), and where to use them."""
    url = f"http://{os.environ.get('WEB_HOST', '127.0.0.1')}:{os.environ['PORT']}"
    await create_account(stage.conn, CUSTOMER, "USD")
    await credit_account(stage.conn, CUSTOMER, Decimal("40"), "demo: opening balance")
    issued = await issue_temporary(stage.conn, CUSTOMER)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        page = await client.get("/login")
    stage.say("\n== The billing console (web) ==")
    stage.say(f"  console      {url}/login  (GET /login -> {page.status_code})")
    stage.say(f"  username     {issued.username}")
    stage.say(f"  password     {issued.password}  (temporary: changed at the first login)")
    stage.say("  test cards   4242 4242 4242 4242 (works), 4000 0000 0000 0002 (declined),")
    stage.say("               4000 0025 0000 3155 (asks the customer to confirm), any CVC")
    if not keeps_running:
        stage.say("  the console stops with the demo: make demo DEMO_ARGS=--keep-running")


async def follow(stage: Stage) -> None:
    """--keep-running: print whatever happens next until Ctrl-C."""
    while stage.honcho.alive():
        await stage.timeline.pump()
        await asyncio.sleep(0.2)
    raise DemoError("the processes stopped:\n" + stage.honcho.tail())
