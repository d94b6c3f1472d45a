"""The audit catches each invariant broken on purpose (each test in a database of its own)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from common.audit import run_audit
from common.cli.main import main
from common.db.engine import create_engine, raw_connection
from common.db.migrate import upgrade
from common.usage.service import apply_submissions
from config.settings import Settings, get_settings
from tests.support.factories import POLICY, create_account, event, new_id, submission
from tests.support.services import Services


@pytest.fixture
async def fresh(
    monkeypatch: pytest.MonkeyPatch, services: Services
) -> AsyncIterator[tuple[Any, Any, str]]:
    """A migrated database holding one healthy account, and a connection to it."""
    name = f"contacto_audit_{uuid.uuid4().hex[:10]}"
    url = services.database_url(name)
    settings = Settings(DATABASE_URL=url)
    await asyncio.to_thread(upgrade, settings)
    engine = create_engine(settings, pool_size=2)
    acct = new_id()
    try:
        async with raw_connection(engine) as conn:
            await create_account(
                conn,
                acct,
                balance="100",
                threshold="50",
                recharge="25",
                payment_method="pm_card_visa",
            )
            await apply_submissions(engine, POLICY, [submission(event(acct, "7.5"))])
            assert all(r.ok for r in await run_audit(conn)), "healthy database must pass"
            monkeypatch.setenv("DATABASE_URL", url)
            get_settings.cache_clear()
            yield engine, conn, acct
    finally:
        get_settings.cache_clear()
        await engine.dispose()
        admin = await asyncpg.connect(services.pg_admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def failing(conn: Any) -> dict[str, list[dict[str, Any]]]:
    return {r.name: r.offending for r in await run_audit(conn) if not r.ok}


async def add_charge(
    conn: Any, acct: str, status: str, *, run_state: str = "succeeded", kind: str = "auto"
) -> int:
    run_id = await conn.fetchval(
        "INSERT INTO recharge_runs (account_id, kind, trigger, tier, recharge_amount, "
        "max_charges, state, finished_at) VALUES ($1, $2, 'threshold', 0, 25, 10, $3, "
        "CASE WHEN $3 IN ('pending', 'failing') THEN NULL ELSE now() END) RETURNING id",
        acct,
        kind,
        run_state,
    )
    if kind == "auto" and run_state in ("pending", "failing"):
        await conn.execute("UPDATE accounts SET auto_run_id = $2 WHERE id = $1", acct, run_id)
    charge_id: int = await conn.fetchval(
        "INSERT INTO charges (run_id, account_id, seq, amount, currency, idempotency_key, "
        "status) VALUES ($1, $2, 1, 25, 'USD', $3, $4) RETURNING id",
        run_id,
        acct,
        f"recharge-{run_id}-charge-1",
        status,
    )
    return charge_id


async def test_balance_not_equal_to_ledger(fresh: Any) -> None:
    _, conn, acct = fresh
    await conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = $1", acct)
    broken = await failing(conn)
    assert list(broken) == ["balance_equals_ledger"]
    assert broken["balance_equals_ledger"][0]["account_id"] == acct


async def test_a_tampered_running_balance(fresh: Any) -> None:
    _, conn, acct = fresh
    await conn.execute("ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only")
    await conn.execute(
        "UPDATE ledger_entries SET balance_after = balance_after + 5 "
        "WHERE account_id = $1 AND kind = 'usage'",
        acct,
    )
    assert list(await failing(conn)) == ["ledger_running_balance"]


async def test_a_usage_event_without_its_debit(fresh: Any) -> None:
    _, conn, acct = fresh
    await conn.execute(
        "INSERT INTO usage_events (event_id, account_id, amount, occurred_at) "
        "VALUES ('lost-debit', $1, 2, now())",
        acct,
    )
    broken = await failing(conn)
    assert list(broken) == ["usage_debited_once"]
    assert broken["usage_debited_once"][0]["event_id"] == "lost-debit"


async def test_a_succeeded_charge_never_credited_and_a_credit_without_charge(fresh: Any) -> None:
    _, conn, acct = fresh
    charge_id = await add_charge(conn, acct, "succeeded")
    broken = await failing(conn)
    assert list(broken) == ["charges_credited_once"]
    assert broken["charges_credited_once"][0]["charge_id"] == charge_id
    # Credited twice is just as wrong (the unique index forbids it: drop it to plant it).
    await conn.execute(
        "ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_reference_key"
    )
    for _ in range(2):
        await conn.execute(
            "INSERT INTO ledger_entries (account_id, amount, balance_after, kind, reference) "
            "SELECT $1, 25, balance + 25, 'recharge', $2 FROM accounts WHERE id = $1",
            acct,
            f"charge-{charge_id}",
        )
        await conn.execute("UPDATE accounts SET balance = balance + 25 WHERE id = $1", acct)
    rows = (await failing(conn))["charges_credited_once"]
    assert rows[0]["credits"] == 2


async def test_two_runs_in_flight(fresh: Any) -> None:
    _, conn, acct = fresh
    await conn.execute("DROP INDEX recharge_runs_in_flight")
    await add_charge(conn, acct, "pending", run_state="pending")
    await add_charge(conn, acct, "pending", run_state="pending")
    broken = await failing(conn)
    assert "one_run_in_flight" in broken
    assert broken["one_run_in_flight"][0]["in_flight"] == 2


async def test_a_tier_no_ladder_step_explains(fresh: Any) -> None:
    _, conn, acct = fresh
    await conn.execute(
        "UPDATE accounts SET retry_tier = 2, last_failure_at = now() WHERE id = $1", acct
    )
    assert list(await failing(conn)) == ["account_matches_history"]
    # Two failed automatic attempts, each counted by the ladder, explain tier 2.
    for tier in (1, 2):
        charge_id = await add_charge(conn, acct, "failed", run_state="failed")
        await history(conn, acct, "ladder.armed", tier, charge_id)
    assert await failing(conn) == {}
    # A step of two tiers at once is not a ladder step.
    charge_id = await add_charge(conn, acct, "failed", run_state="failed")
    await history(conn, acct, "ladder.armed", 4, charge_id)
    await conn.execute("UPDATE accounts SET retry_tier = 4 WHERE id = $1", acct)
    assert list(await failing(conn)) == ["history_justified"]


async def test_a_suspension_the_prepaid_rule_does_not_explain(fresh: Any) -> None:
    _, conn, acct = fresh  # balance 100
    await conn.execute(
        "UPDATE accounts SET status = 'suspended', suspended_at = now(), "
        "suspended_reason = 'ladder' WHERE id = $1",
        acct,
    )
    assert sorted(await failing(conn)) == ["account_matches_history", "prepaid_status"]


async def test_a_stranded_recharge_amount(fresh: Any) -> None:
    _, conn, acct = fresh  # R 25
    await conn.execute("UPDATE accounts SET max_recharge_amount = 20 WHERE id = $1", acct)
    assert list(await failing(conn)) == ["recharge_amounts_within_limits"]


async def test_an_account_pointing_at_no_run_in_flight(fresh: Any) -> None:
    _, conn, acct = fresh
    run_id = await conn.fetchval(
        "INSERT INTO recharge_runs (account_id, kind, trigger, tier, target_amount, "
        "recharge_amount, max_charges, state, finished_at) "
        "VALUES ($1, 'auto', 'threshold', 0, 50, 25, 10, 'succeeded', now()) RETURNING id",
        acct,
    )
    await conn.execute("UPDATE accounts SET auto_run_id = $2 WHERE id = $1", acct, run_id)
    assert list(await failing(conn)) == ["auto_run_pointer"]


async def history(conn: Any, acct: str, cause: str, tier: int, charge_id: int) -> None:
    await conn.execute(
        "INSERT INTO account_history (account_id, cause, retry_tier, status, balance, "
        "auto_recharge, charge_id) VALUES ($1, $2, $3, 'active', 100, true, $4)",
        acct,
        cause,
        tier,
        charge_id,
    )


async def test_a_run_pending_without_a_charge_for_too_long(fresh: Any) -> None:
    _, conn, acct = fresh
    run_id = await conn.fetchval(
        "INSERT INTO recharge_runs (account_id, kind, trigger, tier, target_amount, "
        "recharge_amount, max_charges, created_at) VALUES ($1, 'auto', 'threshold', 0, 50, 25, "
        "10, now() - interval '61 minutes') RETURNING id",
        acct,
    )
    await conn.execute("UPDATE accounts SET auto_run_id = $2 WHERE id = $1", acct, run_id)
    assert list(await failing(conn)) == ["runs_making_progress"]
    await conn.execute(
        "UPDATE recharge_runs SET created_at = now() - interval '59 minutes' WHERE id = $1",
        run_id,
    )
    assert await failing(conn) == {}


async def test_a_stuck_charge_and_an_undrained_outbox(fresh: Any) -> None:
    _, conn, acct = fresh
    charge_id = await add_charge(conn, acct, "pending", run_state="pending")
    await conn.execute(
        "UPDATE charges SET updated_at = now() - interval '2 hours' WHERE id = $1", charge_id
    )
    await conn.execute(
        "UPDATE recharge_runs SET created_at = now() - interval '2 hours' "
        "WHERE id = (SELECT run_id FROM charges WHERE id = $1)",
        charge_id,
    )
    await conn.execute(
        "INSERT INTO outbox (destination, target, actor_name, payload, "
        "deliver_at) VALUES ('queue', 'charges', 'run_recharge', '{}', "
        "now() - interval '10 minutes')"
    )
    assert sorted(await failing(conn)) == ["outbox_drained", "runs_making_progress"]


async def test_the_command_exits_non_zero_with_the_offending_rows(
    fresh: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _, conn, acct = fresh
    assert await asyncio.to_thread(main, ["audit"]) == 0
    assert "all invariants hold" in capsys.readouterr().out
    await conn.execute("UPDATE accounts SET balance = balance - 3 WHERE id = $1", acct)
    assert await asyncio.to_thread(main, ["audit", "--json"]) == 1
    out = capsys.readouterr().out
    assert '"ok": false' in out and acct in out and '"ledger_sum": "92.50"' in out


async def test_rows_naming_a_missing_account(fresh: Any) -> None:
    _, conn, _ = fresh
    await conn.execute(
        "INSERT INTO usage_events (event_id, account_id, amount, occurred_at) "
        "VALUES ('orphan', 'no-such-account', 1, now())"
    )
    await conn.execute(
        "INSERT INTO ledger_entries (account_id, amount, balance_after, kind, reference) "
        "VALUES ('no-such-account', -1, -1, 'usage', 'orphan')"
    )
    broken = await failing(conn)
    assert list(broken) == ["rows_name_existing_accounts"]
    assert {r["table_name"] for r in broken["rows_name_existing_accounts"]} == {
        "ledger_entries",
        "usage_events",
    }


async def test_accounts_cannot_be_deleted(fresh: Any) -> None:
    _, conn, acct = fresh
    with pytest.raises(asyncpg.RaiseError, match="never deleted"):
        await conn.execute("DELETE FROM accounts WHERE id = $1", acct)
