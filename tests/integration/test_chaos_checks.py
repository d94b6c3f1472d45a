"""The chaos run's ladder check can fail: histories the policy would not have written are
caught (the run itself, where they all hold: tests/e2e/test_chaos.py)."""

from __future__ import annotations

from typing import Any

from bench.chaos.checks import suspensions_justified
from tests.support.factories import create_account, new_id


async def failed_auto_charge(conn: Any, account_id: str, tier: int) -> int:
    run_id = await conn.fetchval(
        "INSERT INTO recharge_runs (account_id, kind, trigger, tier, state, recharge_amount, "
        "max_charges, finished_at) VALUES ($1, 'auto', 'threshold', $2, 'failed', 25, 10, now()) "
        "RETURNING id",
        account_id,
        tier,
    )
    charge_id: int = await conn.fetchval(
        "INSERT INTO charges (run_id, account_id, seq, amount, currency, idempotency_key, "
        "status, failure_code) VALUES ($1, $2, 1, 25, 'USD', $3, 'failed', 'card_declined') "
        "RETURNING id",
        run_id,
        account_id,
        new_id("key"),
    )
    return charge_id


async def history(
    conn: Any, account_id: str, cause: str, tier: int, status: str, balance: str, charge: int | None
) -> None:
    await conn.execute(
        "INSERT INTO account_history (account_id, cause, retry_tier, status, suspended_reason, "
        "balance, auto_recharge, charge_id) VALUES ($1, $2, $3, $4, "
        "CASE WHEN $4 = 'suspended' THEN $5 END, $6::numeric, true, $7)",
        account_id,
        cause,
        tier,
        status,
        "ladder" if cause.startswith("ladder") else "no_auto_recharge",
        balance,
        charge,
    )


async def test_ladder_steps_the_policy_would_not_take_are_violations(conn: Any) -> None:
    skipped, prepaid, fine = new_id("skip"), new_id("prepaid"), new_id("fine")
    for account in (skipped, prepaid, fine):
        await create_account(
            conn, account, balance="10", threshold="50", recharge="25", payment_method="pm_x"
        )
    # Tier 0 -> 1 is the policy's; then straight to suspension from tier 1 is not (it arms 2).
    await history(
        conn, skipped, "ladder.armed", 1, "active", "10", await failed_auto_charge(conn, skipped, 0)
    )
    await history(
        conn,
        skipped,
        "ladder.suspended",
        4,
        "suspended",
        "-1",
        await failed_auto_charge(conn, skipped, 1),
    )
    # A prepaid suspension with auto-recharge on: the policy never suspends for that.
    await history(conn, prepaid, "prepaid.suspended", 0, "suspended", "-1", None)
    # One justified step, and the account is where its history ends.
    await history(
        conn, fine, "ladder.armed", 1, "active", "10", await failed_auto_charge(conn, fine, 0)
    )
    await conn.execute(
        "UPDATE accounts SET retry_tier = 1, last_failure_at = now() WHERE id = $1", fine
    )  # fmt: skip

    check = await suspensions_justified(conn, only=[skipped, prepaid, fine])

    text = "\n".join(check.violations)
    assert "from tier 1 at balance -1.000000 the policy says ('armed', 2)" in text, text
    assert f"{prepaid} history" in text and "the policy would not suspend" in text
    # Both accounts' rows say suspended, the accounts do not: reported as well.
    assert f"{skipped}: is at tier 0 active, its history ends at tier 4 suspended" in text
    assert fine not in text
    assert check.violation_count == 4
    assert check.counts["accounts_replayed"] == 3
