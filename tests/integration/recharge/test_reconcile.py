"""The reconciler (common/recharge/reconcile.py) against real PostgreSQL and Redis: what it
re-publishes, what it leaves alone, its lock, and why a duplicate it causes is harmless.

A database of this module's own: a pass looks at every run of the database, and the session's
holds other tests' runs, some left unfinished on purpose.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import dramatiq
import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncEngine

from common.broker.factory import build_redis_broker
from common.db.engine import create_engine, raw_connection
from common.db.migrate import upgrade
from common.gateway.simulated import SimulatedGateway
from common.names import (
    ACTOR_QUEUES,
    ACTOR_RECHECK_TIER,
    ACTOR_RECORD_FAILURE,
    ACTOR_RUN_RECHARGE,
    RECONCILE_LOCK_KEY,
)
from common.recharge.charging import RunState, run_to_completion
from common.recharge.ladder import AlreadyHandled, Held, RunStarted, recheck_tier
from common.recharge.ladder import record_failure as count_failure
from common.recharge.reconcile import ReconcileConfig, ReconcilePass, reconcile_once
from common.recharge.runs import RunStart, start_run
from config.settings import Settings
from tests.support.databases import fresh_database
from tests.support.factories import create_account, new_id
from tests.support.pipeline import LIMITS, NO_WAIT, assert_books_balance, charges

AFTER = timedelta(seconds=60)
CONFIG = ReconcileConfig(after=AFTER, retry_min_interval=timedelta(seconds=1800))


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_database() as (_name, url):
        upgrade(Settings(DATABASE_URL=url))
        yield url


@pytest.fixture
async def rengine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(Settings(DATABASE_URL=database_url), pool_size=4)
    yield eng
    await eng.dispose()


@pytest.fixture
async def rconn(rengine: AsyncEngine) -> AsyncIterator[asyncpg.Connection[Any]]:
    async with raw_connection(rengine) as c:
        yield c


@pytest.fixture
def qsettings(namespace: str) -> Settings:
    return Settings(CONTACTO_BROKER_NAMESPACE=namespace, CONTACTO_BROKER_MAINTENANCE_CHANCE=0)


async def reconcile(engine: AsyncEngine, client: redis.Redis, namespace: str) -> ReconcilePass:
    return await reconcile_once(engine, client, namespace, CONFIG)


def republished(result: ReconcilePass) -> set[tuple[str, str]]:
    return {(r.work.actor_name, json.dumps(r.work.kwargs)) for r in result.republished}


def run_key(actor: str, run_id: int) -> tuple[str, str]:
    return actor, json.dumps({"run_id": run_id})


def recheck_key(account_id: str) -> tuple[str, str]:
    return ACTOR_RECHECK_TIER, json.dumps({"account_id": account_id})


async def lost_run(
    conn: Any, *, state: str = "pending", payment_method: str = "pm_card_visa"
) -> int:
    """A run whose message was published (outbox row sent) and then lost, 2 minutes ago."""
    acct = new_id()
    await create_account(
        conn, acct, balance="10", threshold="100", recharge="50", payment_method=payment_method
    )
    async with conn.transaction():
        run_id = await start_run(
            conn,
            RunStart(
                account_id=acct,
                kind="auto",
                trigger="threshold",
                tier=0,
                target_amount=None,
                recharge_amount=Decimal(50),
                mode="repeat",
                max_charges=10,
            ),
        )
    assert run_id is not None
    if state == "failing":
        await conn.execute(
            "INSERT INTO charges (run_id, account_id, seq, amount, currency, idempotency_key, "
            "status, failure_code, failure_message, updated_at) VALUES ($1, $2, 1, 50, 'USD', "
            "$3, 'failed', 'card_declined', 'declined', now() - interval '2 minutes')",
            run_id,
            acct,
            f"recharge-{run_id}-charge-1",
        )
        await conn.execute("UPDATE recharge_runs SET state = 'failing' WHERE id = $1", run_id)
    await age_run(conn, run_id)
    await conn.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")
    return run_id


async def age_run(conn: Any, run_id: int, seconds: int = 120) -> None:
    await conn.execute(
        "UPDATE recharge_runs SET created_at = created_at - make_interval(secs => $2), "
        "reconciled_at = reconciled_at - make_interval(secs => $2) WHERE id = $1",
        run_id,
        seconds,
    )


async def armed_account(conn: Any, *, failed_ago_s: int = 3600, balance: str = "70") -> str:
    """Tier 1 (75 % of T = 75), the last failure `failed_ago_s` ago, no run in flight."""
    acct = new_id()
    await create_account(
        conn,
        acct,
        balance=balance,
        threshold="100",
        recharge="50",
        tier=1,
        payment_method="pm_card_visa",
    )
    await conn.execute(
        "UPDATE accounts SET last_failure_at = now() - make_interval(secs => $2) WHERE id = $1",
        acct,
        failed_ago_s,
    )
    return acct


async def unsent(conn: Any, actor: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT payload FROM outbox WHERE sent_at IS NULL AND actor_name = $1", actor
    )
    return [json.loads(r["payload"]) for r in rows]


def message(actor: str, **kwargs: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=ACTOR_QUEUES[actor], actor_name=actor, args=(), kwargs=kwargs, options={}
    )


async def test_lost_runs_failures_and_rechecks_are_republished_once_through_the_outbox(
    rengine: AsyncEngine, rconn: Any, client: redis.Redis, namespace: str
) -> None:
    # Given a pending run, a failing run and an overdue armed account, their messages lost
    pending = await lost_run(rconn)
    failing = await lost_run(rconn, state="failing")
    armed = await armed_account(rconn)

    # When the reconciler passes
    result = await reconcile(rengine, client, namespace)

    # Then each gets its message again, as an outbox row, and a progress stamp
    expected = {
        run_key(ACTOR_RUN_RECHARGE, pending),
        run_key(ACTOR_RECORD_FAILURE, failing),
        recheck_key(armed),
    }
    assert expected <= republished(result)
    assert {"run_id": pending} in await unsent(rconn, ACTOR_RUN_RECHARGE)
    assert {"run_id": failing} in await unsent(rconn, ACTOR_RECORD_FAILURE)
    assert {"account_id": armed} in await unsent(rconn, ACTOR_RECHECK_TIER)
    stamps = await rconn.fetch(
        "SELECT reconciled_at FROM recharge_runs WHERE id = ANY($1::bigint[])", [pending, failing]
    )
    assert all(s["reconciled_at"] is not None for s in stamps)
    assert await rconn.fetchval(
        "SELECT recheck_reconciled_at IS NOT NULL FROM accounts WHERE id = $1", armed
    )

    # And the next pass, even once the relay sent those rows (and the broker lost them again),
    # waits CONTACTO_RECONCILE_AFTER_S from the stamp before it sends them again
    await rconn.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")
    assert not expected & republished(await reconcile(rengine, client, namespace))
    await age_run(rconn, pending)
    assert run_key(ACTOR_RUN_RECHARGE, pending) in republished(
        await reconcile(rengine, client, namespace)
    )
    await rconn.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")


async def test_work_that_made_progress_lately_is_left_alone(
    rengine: AsyncEngine, rconn: Any, client: redis.Redis, namespace: str
) -> None:
    fresh = await lost_run(rconn)
    await age_run(rconn, fresh, seconds=-120)  # created just now
    charged = await lost_run(rconn)
    # A charge of this run was updated 10 s ago: a worker is on it.
    acct = await rconn.fetchval("SELECT account_id FROM recharge_runs WHERE id = $1", charged)
    await rconn.execute(
        "INSERT INTO charges (run_id, account_id, seq, amount, currency, idempotency_key, "
        "status, gateway_calls, updated_at) VALUES ($1, $2, 1, 50, 'USD', $3, 'succeeded', 1, "
        "now() - interval '10 seconds')",
        charged,
        acct,
        f"recharge-{charged}-charge-1",
    )
    not_due = await armed_account(rconn, failed_ago_s=1800 + 30)  # due 30 s ago: < AFTER
    above_level = await armed_account(rconn, balance="80")  # tier 1 fires at <= 75
    done = await lost_run(rconn)
    await rconn.execute(
        "UPDATE recharge_runs SET state = 'succeeded', finished_at = now() WHERE id = $1", done
    )

    result = await reconcile(rengine, client, namespace)

    found = republished(result)
    assert run_key(ACTOR_RUN_RECHARGE, fresh) not in found
    assert run_key(ACTOR_RUN_RECHARGE, charged) not in found
    assert run_key(ACTOR_RUN_RECHARGE, done) not in found
    assert recheck_key(not_due) not in found
    assert recheck_key(above_level) not in found
    await rconn.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")


async def test_work_whose_message_the_broker_holds_or_dead_lettered_is_skipped(
    rengine: AsyncEngine,
    rconn: Any,
    client: redis.Redis,
    namespace: str,
    qsettings: Settings,
) -> None:
    broker = build_redis_broker(qsettings)
    ready, delayed, in_flight, dead, on_its_way = [await lost_run(rconn) for _ in range(5)]
    armed_delayed = await armed_account(rconn)
    # Ready on its queue; delayed (a retry's backoff); fetched by a worker, not acked; dead.
    broker.enqueue(message(ACTOR_RUN_RECHARGE, run_id=ready))
    broker.enqueue(message(ACTOR_RUN_RECHARGE, run_id=delayed), delay=600_000)
    broker.enqueue(message(ACTOR_RECHECK_TIER, account_id=armed_delayed), delay=600_000)
    broker.enqueue(message(ACTOR_RUN_RECHARGE, run_id=in_flight))
    broker.enqueue(message(ACTOR_RUN_RECHARGE, run_id=dead))
    consumer = broker.consume(ACTOR_QUEUES[ACTOR_RUN_RECHARGE], prefetch=3, timeout=100)
    fetched = [m for m in (next(consumer) for _ in range(3)) if m is not None]
    assert [m.kwargs["run_id"] for m in fetched] == [ready, in_flight, dead]  # in order
    consumer.requeue([fetched[0]])  # back on the ready list
    consumer.nack(fetched[2])  # dead-lettered
    # Committed, not yet published by the relay.
    async with rconn.transaction():
        await rconn.execute(
            "INSERT INTO outbox (destination, target, actor_name, payload) "
            "VALUES ('queue', $1, $2, $3)",
            ACTOR_QUEUES[ACTOR_RUN_RECHARGE],
            ACTOR_RUN_RECHARGE,
            json.dumps({"run_id": on_its_way}),
        )

    result = await reconcile(rengine, client, namespace)

    found = republished(result)
    for run_id in (ready, delayed, in_flight, dead, on_its_way):
        assert run_key(ACTOR_RUN_RECHARGE, run_id) not in found, run_id
    assert recheck_key(armed_delayed) not in found
    assert result.held >= 5 and result.dead >= 1
    # A dead letter stays ops' decision: the run is still skipped on later passes.
    await rconn.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")
    client.delete(f"{namespace}:charges.msgs", f"{namespace}:charges.DQ.msgs")  # broker "forgets"
    again = republished(await reconcile(rengine, client, namespace))
    assert run_key(ACTOR_RUN_RECHARGE, dead) not in again
    assert run_key(ACTOR_RUN_RECHARGE, ready) in again
    await rconn.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")
    broker.client.close()


async def test_one_reconciler_at_a_time(
    rengine: AsyncEngine, rconn: Any, client: redis.Redis, namespace: str
) -> None:
    run_id = await lost_run(rconn)
    # Another relay's pass holds the lock: this one looks at nothing.
    async with raw_connection(rengine) as other, other.transaction():
        assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1)", RECONCILE_LOCK_KEY)
        skipped = await reconcile(rengine, client, namespace)
    assert not skipped.locked and not skipped.republished
    # Two passes at once: the work goes out once.
    results = await asyncio.gather(*(reconcile(rengine, client, namespace) for _ in range(4)))
    key = run_key(ACTOR_RUN_RECHARGE, run_id)
    assert sum(key in republished(r) for r in results) == 1
    assert (await unsent(rconn, ACTOR_RUN_RECHARGE)).count({"run_id": run_id}) == 1
    await rconn.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")


async def test_a_republished_run_delivered_beside_its_original_charges_once(
    rengine: AsyncEngine, rconn: Any, sim: SimulatedGateway
) -> None:
    # The original was only slow, not lost: both copies arrive, at once and then again.
    run_id = await lost_run(rconn)
    acct = await rconn.fetchval("SELECT account_id FROM recharge_runs WHERE id = $1", run_id)
    states = await asyncio.gather(
        run_to_completion(rengine, sim, run_id, LIMITS),
        run_to_completion(rengine, sim, run_id, LIMITS),
    )
    assert RunState.SUCCEEDED in states
    assert await run_to_completion(rengine, sim, run_id, LIMITS) is RunState.SUCCEEDED
    made = await charges(rconn, acct)
    assert [c["status"] for c in made] == ["succeeded", "succeeded"]  # 10 -> 60 -> 110
    await assert_books_balance(rconn, sim, acct)


async def test_a_republished_failure_or_recheck_delivered_twice_counts_once(
    rengine: AsyncEngine, rconn: Any, sim: SimulatedGateway
) -> None:
    # A failing run: the failure moves the ladder once, the copy finds it handled.
    run_id = await lost_run(rconn, payment_method="pm_card_chargeDeclined")
    acct = await rconn.fetchval("SELECT account_id FROM recharge_runs WHERE id = $1", run_id)
    assert await run_to_completion(rengine, sim, run_id, LIMITS) is RunState.FAILING
    outcomes = await asyncio.gather(
        *(_count_failure(rengine, run_id) for _ in range(2)), return_exceptions=True
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["AlreadyHandled", "Armed"]
    assert isinstance(await _count_failure(rengine, run_id), AlreadyHandled)
    row = await rconn.fetchrow("SELECT retry_tier, status FROM accounts WHERE id = $1", acct)
    assert (row["retry_tier"], row["status"]) == (1, "active")
    history = await rconn.fetchval(
        "SELECT count(*) FROM account_history WHERE account_id = $1", acct
    )
    assert history == 1

    # An overdue re-check, delivered twice: one run starts, the copy holds.
    await rconn.execute(
        "UPDATE accounts SET last_failure_at = now() - interval '2 hours', "
        "payment_method = 'pm_card_visa' WHERE id = $1",
        acct,
    )
    rechecks = await asyncio.gather(*(_recheck(rengine, acct) for _ in range(2)))
    assert sorted(type(o).__name__ for o in rechecks) == ["Held", "RunStarted"]
    assert any(isinstance(o, Held) and o.reason == "in_flight" for o in rechecks)
    started = next(o for o in rechecks if isinstance(o, RunStarted))
    assert (
        await rconn.fetchval(
            "SELECT count(*) FROM recharge_runs WHERE account_id = $1 AND state = 'pending'", acct
        )
        == 1
    )
    assert await run_to_completion(rengine, sim, started.run_id, LIMITS) is RunState.SUCCEEDED
    await assert_books_balance(rconn, sim, acct)


async def _count_failure(engine: AsyncEngine, run_id: int) -> Any:
    async with raw_connection(engine) as conn:
        return await count_failure(conn, run_id, NO_WAIT)


async def _recheck(engine: AsyncEngine, account_id: str) -> Any:
    async with raw_connection(engine) as conn:
        return await recheck_tier(conn, account_id, NO_WAIT)
