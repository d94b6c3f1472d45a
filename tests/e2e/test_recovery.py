"""Recovery without anybody's help, as real processes (issue 12, faults 3 and 4).

* A broker that forgets (a FLUSHDB, a Redis without persistence restarting; on RabbitMQ, a
  purged queue): the runs and the failure whose messages were lost are finished by the
  reconciler the relay runs.
* A charge worker SIGKILLed with messages in flight, again and again: its messages come back
  through the relay's broker maintenance after the heartbeat timeout (on RabbitMQ, as the dead
  consumer's connection drops), not after luck.

Each guarantee has a test per broker (`redis_only`, `rabbitmq_only`), sharing its scenario.

Each test has a database of its own: the reconciler looks at every run of its database, and the
session's holds other tests' runs, some left unfinished on purpose.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pika
import pytest
import redis
import redis.asyncio as aioredis
from dramatiq.common import dq_name

from common.broker.factory import build_broker
from common.broker.publish import usage_message
from common.db.migrate import upgrade
from common.gateway.simulated import delete_state
from common.names import ACTOR_RECORD_FAILURE, ACTOR_RUN_RECHARGE
from common.recharge.reconcile import RECONCILED_QUEUES
from config.settings import Settings
from tests.support.databases import fresh_database
from tests.support.factories import balance_and_ledger, create_account, event, new_id
from tests.support.procs import Proc, dramatiq_worker, relay, worker_env
from tests.support.waiting import until

pytestmark = pytest.mark.slow

# The production defaults this file relies on (config/settings.py), stated for the reader.
HEARTBEAT_TIMEOUT_S = 15
MAINTENANCE_INTERVAL_S = 5


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_database() as (_name, url):
        upgrade(Settings(DATABASE_URL=url))
        yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def sim_prefix(settings: Settings) -> AsyncIterator[str]:
    prefix = f"test-simgw-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = aioredis.Redis.from_url(settings.redis_url)
    await delete_state(client, prefix)
    await client.aclose()


def recovery_env(
    namespace: str, database_url: str, sim_prefix: str, **extra: str
) -> dict[str, str]:
    env = worker_env(
        namespace,
        DATABASE_URL=database_url,
        CONTACTO_SIMULATED_PREFIX=sim_prefix,
        MIN_RECHARGE_AMOUNT="20",
        # One failed attempt stays one: no re-check walks the ladder during the test.
        RETRY_MIN_INTERVAL_SECONDS="3600",
        **extra,
    )
    # The other e2e tests shorten these to 3 s and roll dramatiq's maintenance dice often;
    # here the defaults apply, so what recovers is what recovers in production.
    for name in ("CONTACTO_BROKER_HEARTBEAT_TIMEOUT_MS", "CONTACTO_BROKER_MAINTENANCE_CHANCE"):
        env.pop(name, None)
    return env


def forget(redis_url: str, namespace: str) -> int:
    """FLUSHDB, limited to this test's keys (other sessions share the Redis database)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


async def run_of(db: Any, account: str) -> Any:
    return await db.fetchrow(
        "SELECT id, state FROM recharge_runs WHERE account_id = $1 ORDER BY id DESC LIMIT 1",
        account,
    )


async def sent(db: Any, actor: str, run_id: int) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM outbox WHERE actor_name = $1 AND payload::jsonb = $2::jsonb "
            "AND sent_at IS NOT NULL",
            actor,
            json.dumps({"run_id": run_id}),
        )
    )


async def runs_in_flight_complete_after(
    db: Any, env: dict[str, str], namespace: str, forget: Callable[[], int]
) -> None:
    """A failed attempt whose record_failure message is published and a run whose run_recharge
    message is published, no worker of theirs running; `forget` loses every message of theirs
    (returns how many it removed); the workers come back, and both must finish within two
    minutes, nobody helping."""
    visa, declined = new_id("visa"), new_id("declined")
    await create_account(
        db, visa, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    await create_account(
        db,
        declined,
        balance="100",
        threshold="100",
        recharge="20",
        payment_method="pm_card_chargeDeclined",
    )
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
    with ExitStack() as stack:
        for proc in (relay(env), dramatiq_worker("workers.balance", "usage", env, threads=4)):
            stack.callback(proc.stop)
        # Given a failed attempt whose record_failure message is published, no retry worker yet
        broker.enqueue(usage_message(event(declined, "90")))
        charge = dramatiq_worker("workers.charge", "charges", env, threads=4)
        failing = await until(
            lambda: run_of(db, declined),
            lambda r: r is not None and r["state"] == "failing",
            what="the declined attempt",
        )
        await until(
            lambda: sent(db, ACTOR_RECORD_FAILURE, failing["id"]), bool, what="record_failure"
        )
        charge.stop()
        # And a run whose run_recharge message is published, no charge worker running
        broker.enqueue(usage_message(event(visa, "90")))
        pending = await until(
            lambda: run_of(db, visa), lambda r: r is not None, what="the visa run"
        )
        await until(lambda: sent(db, ACTOR_RUN_RECHARGE, pending["id"]), bool, what="run_recharge")

        # When the broker forgets everything, and the workers come back
        assert forget() > 0
        forgot_at = time.monotonic()
        for proc in (
            dramatiq_worker("workers.charge", "charges", env, threads=4),
            dramatiq_worker("workers.retry", "retries", env, threads=2),
        ):
            stack.callback(proc.stop)

        # Then both finish within two minutes, nobody helping
        await until(
            lambda: balance_and_ledger(db, visa),
            lambda b: b[0] == 110,
            timeout_s=120,
            what="the lost run charged to T",
        )
        row = await until(
            lambda: db.fetchrow("SELECT retry_tier, status FROM accounts WHERE id = $1", declined),
            lambda a: a["retry_tier"] == 1,
            timeout_s=max(1.0, 120 - (time.monotonic() - forgot_at)),
            what="the lost failure counted",
        )
        elapsed = time.monotonic() - forgot_at
        print(f"recovered {elapsed:.1f}s after the broker forgot")
        assert row["status"] == "active"
        assert (await run_of(db, declined))["state"] == "failed"
    balance, total, _ = await balance_and_ledger(db, visa)
    assert balance == total == 110
    assert (
        await db.fetchval(
            "SELECT count(*) FROM charges WHERE account_id = $1 AND status = 'succeeded'", visa
        )
        == 5
    )
    assert await db.fetchval("SELECT count(*) FROM charges WHERE account_id = $1", declined) == 1


def reconciling_env(namespace: str, database_url: str, sim_prefix: str) -> dict[str, str]:
    """recovery_env with a reconciler that looks at work 5 s without progress, every second."""
    return recovery_env(
        namespace,
        database_url,
        sim_prefix,
        CONTACTO_RECONCILE_AFTER_S="5",
        CONTACTO_RECONCILE_INTERVAL_S="1",
    )


@pytest.mark.redis_only
async def test_after_redis_forgets_every_message_the_runs_in_flight_complete_on_their_own(
    db: Any, database_url: str, namespace: str, sim_prefix: str, settings: Settings
) -> None:
    """Redis forgets by losing its keys: every message, ready, delayed or in flight, at once."""
    await runs_in_flight_complete_after(
        db,
        reconciling_env(namespace, database_url, sim_prefix),
        namespace,
        lambda: forget(settings.redis_url, namespace),
    )


def purge_work_queues(namespace: str) -> int:
    """RabbitMQ's way to forget: purge the queues of the reconciled work (and their delay
    queues), with no consumer attached, so that every message of theirs is ready and goes."""
    url = Settings(CONTACTO_BROKER_NAMESPACE=namespace).broker_url
    assert url is not None and url.startswith("amqp://")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        purged = 0
        for queue in RECONCILED_QUEUES:
            for name in (queue, dq_name(queue)):
                # Passive: a queue the workers did not declare fails the test, not re-declared.
                assert channel.queue_declare(name, passive=True).method.consumer_count == 0
                purged += int(channel.queue_purge(name).method.message_count)
        return purged
    finally:
        connection.close()


@pytest.mark.rabbitmq_only
async def test_after_rabbitmq_purges_the_work_queues_the_runs_in_flight_complete_on_their_own(
    db: Any, database_url: str, namespace: str, sim_prefix: str
) -> None:
    """The same loss on RabbitMQ, whose reconciler cannot look into the queues (reading a
    message takes it): the stale work is re-published blind, and its handlers absorb it."""
    await runs_in_flight_complete_after(
        db,
        reconciling_env(namespace, database_url, sim_prefix),
        namespace,
        lambda: purge_work_queues(namespace),
    )


def crashing_env(
    namespace: str, database_url: str, sim_prefix: str, tmp_path: Path
) -> dict[str, str]:
    """A charge worker dies at its first charge (CONTACTO_CRASH_AT), once per marker; the
    reconciler waits a day (worker_env): only the broker can give the messages back."""
    return recovery_env(
        namespace,
        database_url,
        sim_prefix,
        CONTACTO_CRASH_AT="charge.before_gateway",
        CONTACTO_CRASH_MARKER=str(tmp_path / "crash"),
    )


# Kills charge workers holding the run messages; returns time.monotonic() of the last kill.
Kills = Callable[[dict[str, str], Path], Awaitable[float]]


async def recharged_after_four_kills(
    db: Any, env: dict[str, str], namespace: str, tmp_path: Path, kills: Kills
) -> list[Decimal]:
    """Four accounts' run messages published; `kills` kills four charge workers that fetched
    them; then one is left running, and every account must be recharged within 90 s of the
    last kill, by the broker giving the messages back (not by the reconciler). Returns the
    balances as they were right after the kills."""
    accounts = [new_id(f"kill{i}") for i in range(4)]
    for acct in accounts:
        await create_account(
            db, acct, balance="100", threshold="100", recharge="20", payment_method="pm_card_visa"
        )
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))

    async def balances() -> list[Decimal]:
        return [(await balance_and_ledger(db, acct))[0] for acct in accounts]

    with ExitStack() as stack:
        relayed = relay(env)
        for proc in (relayed, dramatiq_worker("workers.balance", "usage", env, threads=4)):
            stack.callback(proc.stop)
        for acct in accounts:
            broker.enqueue(usage_message(event(acct, "90")))

        async def published() -> int:
            return int(
                await db.fetchval(
                    "SELECT count(*) FROM outbox WHERE actor_name = $1 AND sent_at IS NOT NULL",
                    ACTOR_RUN_RECHARGE,
                )
            )

        await until(published, lambda n: n == 4, what="four run messages published")
        last_kill = await kills(env, tmp_path)
        after_kills = await balances()
        stack.callback(dramatiq_worker("workers.charge", "charges", env, threads=4).stop)
        await until(
            balances,
            lambda found: all(b == 110 for b in found),
            timeout_s=90,
            what="all four accounts recharged within 90 s of the last kill",
        )
        elapsed = time.monotonic() - last_kill
        print(f"recharged {elapsed:.1f}s after the last kill")
        assert "reconcile.republished" not in relayed.output()
    for acct in accounts:
        balance, total, _ = await balance_and_ledger(db, acct)
        assert balance == total == 110
    return after_kills


async def killed_before_the_heartbeat_timeout(env: dict[str, str], tmp_path: Path) -> float:
    """Four kills, 2.5 s apart: the first at the crash point (with all four run messages
    fetched), three from outside, each of a worker a supervisor restarted."""
    first = dramatiq_worker("workers.charge", "charges", env, threads=4)
    assert first.wait_exit(timeout_s=60) != 0
    first.stop()
    assert (tmp_path / "crash.charge.before_gateway").exists()
    last_kill = time.monotonic()
    for _ in range(3):
        worker = dramatiq_worker("workers.charge", "charges", env, threads=4, ready=False)
        await asyncio.sleep(max(0.0, last_kill + 2.5 - time.monotonic()))
        worker.kill()
        worker.stop()
        last_kill = time.monotonic()
    return last_kill


@pytest.mark.redis_only
async def test_a_charge_worker_killed_four_times_recharges_its_accounts_within_90s(
    db: Any, database_url: str, namespace: str, sim_prefix: str, tmp_path: Path
) -> None:
    """The messages come back through the relay's broker maintenance, once the dead workers'
    heartbeats are older than the timeout."""
    env = crashing_env(namespace, database_url, sim_prefix, tmp_path)
    await recharged_after_four_kills(
        db, env, namespace, tmp_path, killed_before_the_heartbeat_timeout
    )


def crashed(worker: Proc, timeout_s: float) -> bool:
    """Whether `worker` died (of its crash point) within `timeout_s`; stopped either way."""
    try:
        return worker.wait_exit(timeout_s=timeout_s) != 0
    except subprocess.TimeoutExpired:
        return False
    finally:
        worker.stop()


async def killed_at_the_crash_point(env: dict[str, str], tmp_path: Path) -> float:
    """Four workers in a row, each SIGKILLed by a crash point at its first charge, so each dies
    with run messages fetched and unacknowledged (on RabbitMQ they are back at once: a worker
    killed from outside 2.5 s after its start might already have done the work). A marker per
    worker, the env's own last, so the worker started after them crashes no more."""
    markers = [tmp_path / f"crash{i}" for i in range(1, 4)] + [tmp_path / "crash"]
    assert env["CONTACTO_CRASH_MARKER"] == str(markers[-1])
    for marker in markers:
        worker = dramatiq_worker(
            "workers.charge",
            "charges",
            env | {"CONTACTO_CRASH_MARKER": str(marker)},
            threads=4,
            ready=False,  # it may die before it says it is ready
        )
        assert crashed(worker, timeout_s=30), f"{marker.name}: no run message came back to it"
        assert marker.with_name(f"{marker.name}.charge.before_gateway").exists()
    return time.monotonic()


@pytest.mark.rabbitmq_only
async def test_a_charge_worker_killed_four_times_recharges_its_accounts_within_90s_on_rabbitmq(
    db: Any, database_url: str, namespace: str, sim_prefix: str, tmp_path: Path
) -> None:
    """No heartbeat and no maintenance: RabbitMQ returns a consumer's unacknowledged messages
    to the quorum queue as its connection drops, a SIGKILL's included, to the next worker."""
    env = crashing_env(namespace, database_url, sim_prefix, tmp_path)
    after_kills = await recharged_after_four_kills(
        db, env, namespace, tmp_path, killed_at_the_crash_point
    )
    # Every worker died before its first gateway call: nothing was charged until the last.
    assert after_kills == [Decimal("10")] * 4
