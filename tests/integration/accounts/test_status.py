"""The prepaid rule as the services apply it (common/accounts/status.py): a balance at or
below 0 with nothing armed or in flight suspends; above 0, or auto-recharge on again, returns."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from common.accounts.support import credit_account
from common.audit import run_audit
from common.recharge.settings import set_auto_recharge
from tests.support.factories import create_account, new_id
from tests.support.pipeline import TEST_SETTINGS, account_row, debit, events


async def status_of(conn: Any, acct: str) -> tuple[str, str | None, Decimal]:
    row = await account_row(conn, acct)
    return row["status"], row["suspended_reason"], row["balance"]


async def assert_audit_clean(conn: Any, acct: str) -> None:
    """No invariant broken for this account (other tests' accounts are set up by hand)."""
    results = await run_audit(conn, limit=100_000, settings=TEST_SETTINGS)
    broken = {r.name: [o for o in r.offending if o.get("account_id") == acct] for r in results}
    assert {n: rows for n, rows in broken.items() if rows} == {}


async def test_without_auto_recharge_the_debit_that_reaches_zero_suspends(
    engine: Any, conn: Any
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10")
    await debit(engine, acct, "9.99")
    assert await status_of(conn, acct) == ("active", None, Decimal("0.01"))
    await debit(engine, acct, "0.01")  # exactly 0: no credit left
    assert await status_of(conn, acct) == ("suspended", "no_auto_recharge", Decimal(0))
    await debit(engine, acct, "5")  # still recorded: the call already happened
    assert await status_of(conn, acct) == ("suspended", "no_auto_recharge", Decimal(-5))
    await credit_account(conn, acct, Decimal(5), "goodwill")
    assert await status_of(conn, acct) == ("suspended", "no_auto_recharge", Decimal(0))
    await credit_account(conn, acct, Decimal("0.01"), "goodwill")
    assert await status_of(conn, acct) == ("active", None, Decimal("0.01"))
    assert [t for t, _ in await events(conn, acct)] == ["account.suspended", "account.reactivated"]
    [(_, suspended)] = [e for e in await events(conn, acct) if e[0] == "account.suspended"]
    assert suspended == {"account_id": acct, "balance": "0.00", "run_id": None,
                         "reason": "no_auto_recharge"}  # fmt: skip
    await assert_audit_clean(conn, acct)


async def test_switching_auto_recharge_off_at_zero_suspends_and_on_again_revives(
    engine: Any, conn: Any
) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="-5", threshold="100", recharge="25", tier=2,
        payment_method="pm_card_visa",
    )  # fmt: skip
    await set_auto_recharge(conn, acct, TEST_SETTINGS, balance_amount=None, recharge_amount=None)
    assert await status_of(conn, acct) == ("suspended", "no_auto_recharge", Decimal(-5))
    run_id = await set_auto_recharge(
        conn, acct, TEST_SETTINGS, balance_amount=Decimal(100), recharge_amount=Decimal(25)
    )
    # The ladder is armed again (tier 2, its interval long past): the account is back, and the
    # armed attempt starts at once.
    assert await status_of(conn, acct) == ("active", None, Decimal(-5))
    assert run_id is not None
    row = await account_row(conn, acct)
    assert (row["retry_tier"], row["auto_run_id"]) == (2, run_id)


async def test_a_ladder_suspension_is_not_lifted_by_switching_auto_recharge_on(
    engine: Any, conn: Any
) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="-5", threshold="100", recharge="25", tier=4, status="suspended",
        payment_method="pm_card_visa",
    )  # fmt: skip
    run_id = await set_auto_recharge(
        conn, acct, TEST_SETTINGS, balance_amount=Decimal(100), recharge_amount=Decimal(30)
    )
    assert run_id is None
    assert await status_of(conn, acct) == ("suspended", "ladder", Decimal(-5))


async def test_with_auto_recharge_on_a_balance_below_zero_waits_for_the_ladder(
    engine: Any, conn: Any
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10", threshold="100", recharge="25")
    outcome = await debit(engine, acct, "50")
    assert list(outcome.runs_started) == [acct]
    assert await status_of(conn, acct) == ("active", None, Decimal(-40))
