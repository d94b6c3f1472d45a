"""Drive the recharge pipeline in-process: what the charge and retry workers would do with the
messages the outbox holds, without the processes (fast, deterministic scenario tests)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from common.db.engine import raw_connection
from common.gateway import PaymentGateway
from common.gateway.simulated import SimulatedGateway
from common.recharge.charging import run_to_completion
from common.recharge.config import ChargeLimits, PolicyConfig
from common.recharge.ladder import record_failure
from common.usage.service import apply_submissions
from config.settings import Settings
from tests.support.factories import balance_and_ledger, event, submission

TEST_SETTINGS = Settings(
    MIN_RECHARGE_AMOUNT="20", MAX_RECHARGE_AMOUNT="500", RETRY_MIN_INTERVAL_SECONDS=0
)
LIMITS = ChargeLimits.from_settings(TEST_SETTINGS)
NO_WAIT = PolicyConfig(retry_min_interval=timedelta(0), run_max_charges=10)


async def settle(
    engine: Any,
    gateway: PaymentGateway,
    account_id: str,
    policy: PolicyConfig = NO_WAIT,
    limits: ChargeLimits = LIMITS,
) -> None:
    """Run every in-flight run of the account to its end, and record failures."""
    for _ in range(50):
        async with raw_connection(engine) as conn:
            runs = await conn.fetch(
                "SELECT id, state FROM recharge_runs WHERE account_id = $1 "
                "AND state IN ('pending', 'failing') ORDER BY id",
                account_id,
            )
        if not runs:
            return
        for run in runs:
            if run["state"] == "pending":
                await run_to_completion(engine, gateway, run["id"], limits)
            else:
                async with raw_connection(engine) as conn:
                    await record_failure(conn, run["id"], policy)
    raise AssertionError("runs did not settle")


async def account_row(conn: Any, account_id: str) -> Any:
    return await conn.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)


async def charges(conn: Any, account_id: str) -> list[Any]:
    return list(
        await conn.fetch(
            "SELECT c.*, r.kind AS run_kind, r.tier AS run_tier FROM charges c "
            "JOIN recharge_runs r ON r.id = c.run_id WHERE c.account_id = $1 ORDER BY c.id",
            account_id,
        )
    )


async def events(conn: Any, account_id: str) -> list[tuple[str, dict[str, Any]]]:
    import json

    rows = await conn.fetch(
        "SELECT target, payload FROM outbox WHERE destination = 'stream' "
        "AND payload::jsonb ->> 'account_id' = $1 ORDER BY id",
        account_id,
    )
    return [(r["target"], json.loads(r["payload"])) for r in rows]


async def debit(engine: Any, account: str, amount: str, policy: PolicyConfig = NO_WAIT) -> Any:
    [outcome] = await apply_submissions(engine, policy, [submission(event(account, amount))])
    return outcome


async def assert_books_balance(conn: Any, sim: SimulatedGateway, account: str) -> None:
    """balance == sum(ledger); every succeeded charge credited once, at the gateway once."""
    balance, total, _ = await balance_and_ledger(conn, account)
    assert balance == total
    for c in await charges(conn, account):
        credits = await conn.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE kind = 'recharge' AND reference = $1",
            f"charge-{c['id']}",
        )
        assert credits == (1 if c["status"] == "succeeded" else 0)
        assert await sim.charges_made(c["idempotency_key"]) == (
            1 if c["status"] == "succeeded" else 0
        )
