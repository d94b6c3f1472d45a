"""Usage debits against the real PostgreSQL: exactly once, never a lost update."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from common.db.engine import raw_connection
from common.db.hotpool import HOT_SETTINGS
from common.usage.debits import _DEBIT
from common.usage.decode import Incoming, parse_event
from common.usage.service import apply_submissions
from tests.support.factories import (
    POLICY,
    balance_and_ledger,
    create_account,
    event,
    new_id,
    submission,
)


async def test_a_debit_writes_one_ledger_row_and_moves_the_balance(engine: Any, conn: Any) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10")
    [outcome] = await apply_submissions(engine, POLICY, [submission(event(acct, "2.500001"))])
    assert outcome.applied == 1
    balance, total, rows = await balance_and_ledger(conn, acct)
    assert balance == total == Decimal("7.499999") and rows == 2
    entry = await conn.fetchrow(
        "SELECT amount, balance_after, kind FROM ledger_entries WHERE account_id = $1 "
        "AND kind = 'usage'",
        acct,
    )
    assert (entry["amount"], entry["balance_after"]) == (Decimal("-2.500001"), balance)


async def test_duplicates_in_sequence_and_within_a_batch_are_debited_once(
    engine: Any, conn: Any
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10")
    ev = event(acct, "1")
    await apply_submissions(engine, POLICY, [submission(ev)])
    [again] = await apply_submissions(engine, POLICY, [submission(ev, ev)])
    assert (again.applied, again.duplicates, again.rejected) == (0, 1, [])
    both = await apply_submissions(engine, POLICY, [submission(ev), submission(ev)])
    assert [o.applied for o in both] == [0, 0]
    balance, total, rows = await balance_and_ledger(conn, acct)
    assert balance == total == 9 and rows == 2


async def test_the_same_event_racing_on_many_connections_is_debited_once(
    engine: Any, conn: Any
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="100")
    events = [event(acct, "1") for _ in range(20)]
    # Every event is submitted by 5 concurrent transactions at once, in different orders.
    subs = [submission(*(events if i % 2 else events[::-1])) for i in range(5)]
    outcomes = await asyncio.gather(*(apply_submissions(engine, POLICY, [s]) for s in subs))
    assert sum(o[0].applied for o in outcomes) == 20
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total == 80


async def test_concurrent_debits_on_one_account_lose_nothing(engine: Any, conn: Any) -> None:
    acct = new_id()
    await create_account(conn, acct)
    amounts = [Decimal("0.000001") * (i + 1) for i in range(200)]
    await asyncio.gather(
        *(apply_submissions(engine, POLICY, [submission(event(acct, str(a)))]) for a in amounts)
    )
    balance, total, rows = await balance_and_ledger(conn, acct)
    assert balance == total == -sum(amounts) and rows == 200
    afters = await conn.fetch(
        "SELECT amount, balance_after FROM ledger_entries WHERE account_id = $1 ORDER BY id", acct
    )
    running = Decimal(0)
    for row in afters:  # balance_after is a true running balance in id order
        running += row["amount"]
        assert row["balance_after"] == running


async def test_unknown_account_wrong_currency_and_reused_ids_are_kept_with_reasons(
    engine: Any, conn: Any
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10", currency="EUR")
    good = event(acct, "1", currency="EUR")
    reused = dict(good, amount="2")
    unknown = event(new_id("ghost"), "1")
    wrong_currency = event(acct, "1", currency="USD")
    bad_amount = dict(event(acct, currency="EUR"), amount=1.5)
    sub = submission(good, unknown, wrong_currency, bad_amount)
    [outcome] = await apply_submissions(engine, POLICY, [sub])
    assert outcome.applied == 1 and len(outcome.rejected) == 3
    [later] = await apply_submissions(engine, POLICY, [submission(reused)])
    assert later.applied == 0 and "already recorded with a different" in later.rejected[0]
    rows = await conn.fetch(
        "SELECT reason, payload FROM rejected_usage WHERE event_id = ANY($1) ORDER BY id",
        [unknown["event_id"], wrong_currency["event_id"], bad_amount["event_id"], good["event_id"]],
    )
    reasons = [r["reason"] for r in rows]
    assert any("unknown account" in r for r in reasons)
    assert any("currency USD does not match the account's EUR" in r for r in reasons)
    assert any("decimal string, got a number" in r for r in reasons)
    assert any("different account or amount" in r for r in reasons)
    assert all(r["payload"] for r in rows)
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total == 9


async def test_a_redelivered_bad_message_is_kept_once(engine: Any, conn: Any) -> None:
    bad = event(new_id("ghost"), "1")
    sub = submission(bad, message_id="same-message")
    await apply_submissions(engine, POLICY, [sub])
    await apply_submissions(engine, POLICY, [sub])
    n = await conn.fetchval(
        "SELECT count(*) FROM rejected_usage WHERE event_id = $1", bad["event_id"]
    )
    assert n == 1


async def test_suspended_accounts_are_still_debited(engine: Any, conn: Any) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="0", status="suspended", tier=4, threshold="100", recharge="20"
    )
    [outcome] = await apply_submissions(engine, POLICY, [submission(event(acct, "3"))])
    assert outcome.applied == 1 and outcome.runs_started == {}
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total == -3


async def test_falling_below_t_starts_one_run_with_its_outbox_message(
    engine: Any, conn: Any
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="100", threshold="100", recharge="20")
    [first] = await apply_submissions(engine, POLICY, [submission(event(acct, "90"))])
    assert list(first.runs_started) == [acct]
    run_id = first.runs_started[acct]
    # More debits while the run is in flight start nothing more.
    await asyncio.gather(
        *(apply_submissions(engine, POLICY, [submission(event(acct, "1"))]) for _ in range(10))
    )
    runs = await conn.fetch(
        "SELECT id, state, tier, trigger, target_amount, recharge_amount "
        "FROM recharge_runs WHERE account_id = $1",
        acct,
    )
    assert [(r["id"], r["state"], r["tier"], r["trigger"]) for r in runs] == [
        (run_id, "pending", 0, "threshold")
    ]
    assert (runs[0]["target_amount"], runs[0]["recharge_amount"]) == (100, 20)
    outbox = await conn.fetch(
        "SELECT target, actor_name, payload FROM outbox WHERE payload = $1",
        f'{{"run_id": {run_id}}}',
    )
    assert [(o["target"], o["actor_name"]) for o in outbox] == [("charges", "run_recharge")]


async def test_accounts_crossing_t_together_each_get_their_run_and_message(
    engine: Any, conn: Any
) -> None:
    """One group commit, several crossings: every run and its message are written together
    (start_runs), and an account whose run the index refuses gets none, the others theirs."""
    crossing = [new_id() for _ in range(5)]
    taken = new_id()
    for acct in [*crossing, taken]:
        await create_account(conn, acct, balance="100", threshold="100", recharge="20")
    # A run in flight the account row does not know of: only the unique index stops a second.
    held = await conn.fetchval(
        "INSERT INTO recharge_runs (account_id, kind, trigger, tier, recharge_amount, "
        "max_charges) VALUES ($1, 'auto', 'threshold', 0, 20, 10) RETURNING id",
        taken,
    )
    subs = [submission(event(acct, "1")) for acct in [*crossing, taken]]
    outcomes = await apply_submissions(engine, POLICY, subs)
    started = {a: r for o in outcomes for a, r in o.runs_started.items()}
    assert sorted(started) == sorted(crossing)
    rows = await conn.fetch(
        "SELECT a.id, a.auto_run_id, r.id AS run_id, r.tier, r.trigger, r.target_amount, "
        "r.recharge_amount, r.mode, r.max_charges, "
        "(SELECT count(*) FROM outbox o WHERE o.actor_name = 'run_recharge' "
        " AND o.payload = json_build_object('run_id', r.id)::jsonb::text) AS messages "
        "FROM accounts a JOIN recharge_runs r ON r.account_id = a.id WHERE a.id = ANY($1)",
        [*crossing, taken],
    )
    by_account = {r["id"]: r for r in rows}
    for acct in crossing:
        row = by_account[acct]
        assert row["run_id"] == started[acct] == row["auto_run_id"]
        assert (row["tier"], row["trigger"], row["target_amount"], row["recharge_amount"]) == (
            0,
            "threshold",
            100,
            20,
        )
        assert (row["mode"], row["max_charges"], row["messages"]) == (
            "repeat",
            POLICY.run_max_charges,
            1,
        )
    assert (by_account[taken]["run_id"], by_account[taken]["auto_run_id"]) == (held, None)
    assert by_account[taken]["messages"] == 0


async def test_at_t_exactly_nothing_starts(engine: Any, conn: Any) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="101", threshold="100", recharge="20")
    [outcome] = await apply_submissions(engine, POLICY, [submission(event(acct, "1"))])
    assert outcome.runs_started == {}


async def test_the_database_enforces_one_auto_run_in_flight(conn: Any) -> None:
    acct = new_id()
    await create_account(conn, acct)
    insert = (
        "INSERT INTO recharge_runs (account_id, kind, trigger, tier, recharge_amount, "
        "max_charges) VALUES ($1, 'auto', 'threshold', 0, 20, 10)"
    )
    await conn.execute(insert, acct)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert, acct)


async def test_the_ledger_is_append_only(conn: Any) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="5")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await conn.execute("UPDATE ledger_entries SET amount = 6 WHERE account_id = $1", acct)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await conn.execute("DELETE FROM ledger_entries WHERE account_id = $1", acct)


async def test_input_the_database_refuses_is_isolated_and_rejected(engine: Any, conn: Any) -> None:
    """Defence in depth: an event that passed validation but that PostgreSQL refuses (here an
    occurred_at PostgreSQL cannot store) is rejected alone; its group is still applied."""
    acct = new_id()
    await create_account(conn, acct, balance="10")
    good = submission(event(acct, "1"))
    poison = submission(event(acct, "1"))
    valid = parse_event(event(acct, "1"))
    # Validation refuses such dates; built directly to stand for whatever else may slip by.
    poisoned = replace(valid, occurred_at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))))
    poison.items.append(Incoming(poisoned, poison.message_id, "record_usage_batch", {}))
    outcomes = await apply_submissions(engine, POLICY, [good, poison])
    assert [o.applied for o in outcomes] == [1, 1]
    assert "database refused" in outcomes[1].rejected[0]
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total == 8


async def test_ids_postgresql_cannot_store_are_rejected_and_kept_escaped(
    engine: Any, conn: Any
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="5")
    marker = uuid.uuid4().hex
    bad = [
        dict(event(acct), event_id=f"{marker}\x00"),
        dict(event(acct), event_id=f"{marker}\ud800"),
        dict(event(acct), account_id=f"{marker}\x00"),
    ]
    [outcome] = await apply_submissions(engine, POLICY, [submission(*bad, event(acct, "1"))])
    assert outcome.applied == 1 and len(outcome.rejected) == 3
    stored = await conn.fetch(
        "SELECT event_id, account_id FROM rejected_usage "
        "WHERE event_id LIKE $1 OR account_id LIKE $1",
        f"{marker}%",
    )
    assert len(stored) == 3


async def test_a_debit_that_waited_for_the_account_lock_uses_the_balance_it_waited_for(
    engine: Any, conn: Any
) -> None:
    """The debit statement's snapshot predates its lock: balances must come from the lock.

    A holds the account's lock and moves the balance (a credit), B's debit waits on that lock
    inside its one statement; when A commits, B must build on A's balance, not on the one its
    snapshot saw.
    """
    acct = new_id()
    await create_account(conn, acct, balance="100")
    async with raw_connection(engine) as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", acct)
        debit = asyncio.create_task(
            apply_submissions(engine, POLICY, [submission(event(acct, "1"))])
        )
        await until_waiting_on_a_lock(conn)
        await holder.execute("UPDATE accounts SET balance = balance + 50 WHERE id = $1", acct)
        await holder.execute(
            "INSERT INTO ledger_entries (account_id, amount, balance_after, kind, reference) "
            "VALUES ($1, 50, 150, 'credit', $2)",
            acct,
            f"while-waiting-{acct}",
        )
        await tx.commit()
        [outcome] = await debit
    assert outcome.applied == 1
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total == 149
    after = await conn.fetchval(
        "SELECT balance_after FROM ledger_entries WHERE account_id = $1 AND kind = 'usage'", acct
    )
    assert after == 149


async def until_waiting_on_a_lock(conn: Any) -> None:
    for _ in range(500):
        if await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the debit never waited on the account lock")


async def test_an_in_batch_repeat_of_a_rejected_event_gets_the_same_reason(
    engine: Any, conn: Any
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10")
    ghost = event(new_id("ghost"), "1")
    reused_elsewhere = dict(event(acct, "1"), event_id=ghost["event_id"])
    [outcome] = await apply_submissions(
        engine, POLICY, [submission(ghost, dict(ghost), reused_elsewhere)]
    )
    assert outcome.applied == 0 and outcome.duplicates == 0
    assert [r.split(" ")[0] for r in outcome.rejected] == ["unknown", "unknown", "event_id"]
    assert "reused with a different account or amount" in outcome.rejected[2]
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total == 10


async def test_the_ledger_of_one_transaction_follows_arrival_order(engine: Any, conn: Any) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10")
    # ids sorting against arrival: the statement claims in id order, the ledger keeps arrival
    events = [event(acct, amount, event_id=f"{acct}-{9 - n}") for n, amount in enumerate("123")]
    await apply_submissions(engine, POLICY, [submission(*events)])
    rows = await conn.fetch(
        "SELECT amount, balance_after FROM ledger_entries WHERE account_id = $1 "
        "AND kind = 'usage' ORDER BY id",
        acct,
    )
    assert [(r["amount"], r["balance_after"]) for r in rows] == [(-1, 9), (-2, 7), (-3, 4)]


@pytest.mark.parametrize("events", [3, 300])
async def test_the_debit_statement_generic_plan_stays_linear(conn: Any, events: int) -> None:
    """The hot connections run generic plans, in which every CTE is estimated at a row or two.

    A join between two CTEs then becomes a nested loop, quadratic in the events (it cost 16 ms
    of 23 for 300 events): none may appear, whatever the size.
    """
    arrays = (
        [[f"e{i}" for i in range(events)]] * 2
        + [["1"] * events]
        + [[datetime.now(UTC).isoformat()] * events]
        + [["voice"] * events, ["USD"] * events, sorted({f"e{i}" for i in range(events)})]
    )
    types = ["text[]", "text[]", "text[]", "timestamptz[]", "text[]", "text[]", "text[]"]
    literals = ", ".join(
        "ARRAY[" + ", ".join(f"'{v}'" for v in values) + f"]::{kind}"
        for values, kind in zip(arrays, types, strict=True)
    )
    for name, value in HOT_SETTINGS.items():  # as on the balance worker's connections
        await conn.execute(f"SET {name} = {value}")
    try:
        name = f"debit_plan_{events}"
        await conn.execute(
            f"PREPARE {name} (text[], text[], text[], timestamptz[], text[], text[], text[]) "
            f"AS {_DEBIT}"
        )
        plan = [r[0] for r in await conn.fetch(f"EXPLAIN (COSTS OFF) EXECUTE {name} ({literals})")]
        await conn.execute(f"DEALLOCATE {name}")
    finally:
        for name in HOT_SETTINGS:
            await conn.execute(f"RESET {name}")
    text = "\n".join(plan)
    assert "$7" in text, text  # a generic plan: parameters, not the values
    assert "Join Filter" not in text, text  # the quadratic pattern: a nested loop over CTEs
    # The one nested loop allowed: the UPDATE looking each account up by its primary key.
    assert text.count("Nested Loop") <= 1, text
    if "Nested Loop" in text:
        assert "Index Cond: (id = t_1.account_id)" in text, text
    assert "hashed SubPlan" in text, text
    # Every table read by key, however small the table was when the plan was made.
    assert "Seq Scan" not in text, text


async def test_a_debit_that_waited_on_a_run_finishing_sees_it_finished(
    engine: Any, conn: Any
) -> None:
    """Regression: the debit statement read "an automatic run is in flight" from its snapshot,
    which predates the lock it waited on. T 100 and balance 123; the run finishes while a debit
    of 40 waits: the balance ended at 83 and no run started until some later debit."""
    acct = new_id()
    await create_account(conn, acct, balance="123", threshold="100", recharge="20")
    run_id = await conn.fetchval(
        "INSERT INTO recharge_runs (account_id, kind, trigger, tier, target_amount, "
        "recharge_amount, mode, max_charges) VALUES ($1, 'auto', 'threshold', 0, 100, 20, "
        "'repeat', 10) RETURNING id",
        acct,
    )
    await conn.execute("UPDATE accounts SET auto_run_id = $2 WHERE id = $1", acct, run_id)
    async with raw_connection(engine) as holder:
        tx = holder.transaction()
        await tx.start()
        # What the charge worker's last transaction does: lock the account, finish the run.
        await holder.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", acct)
        debit = asyncio.create_task(
            apply_submissions(engine, POLICY, [submission(event(acct, "40"))])
        )
        await until_waiting_on_a_lock(conn)
        await holder.execute(
            "UPDATE recharge_runs SET state = 'succeeded', finished_at = now() WHERE id = $1",
            run_id,
        )
        await holder.execute("UPDATE accounts SET auto_run_id = NULL WHERE id = $1", acct)
        await tx.commit()
        [outcome] = await debit
    assert outcome.applied == 1
    assert list(outcome.runs_started) == [acct]
