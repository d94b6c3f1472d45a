"""The simulated gateway's state in Redis: test cards, idempotency, faults, concurrency.

Every behaviour runs twice, on fakeredis (with Lua) and on the real Redis (`connect` is
parametrized): the fake is what a developer runs in a second, the real one what production runs.
Then real OS processes share the real Redis: one charge per key, state that outlives SIGKILL.
What needs no Redis state (factory, attaching cards) is in tests/unit/test_gateway_simulated.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis

from common.gateway import (
    ChargeFailed,
    ChargeRequest,
    ChargeResult,
    ChargeSucceeded,
    GatewayConfigError,
    TransientGatewayError,
)
from common.gateway.simulated import SimulatedGateway, delete_state, inject_faults
from tests.support.factories import charge_request
from tests.support.services import Services
from tests.support.session import NAMESPACE_PREFIX

ROOT = Path(__file__).resolve().parents[2]

# A new client of the test's Redis (fakeredis: the same fake server), closed after the test.
Connect = Callable[..., aioredis.Redis]


@pytest.fixture(params=["fakeredis", "redis"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    clients: list[aioredis.Redis] = []
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()

        def new(**kwargs: Any) -> aioredis.Redis:
            clients.append(fakeredis.FakeAsyncRedis(server=server, **kwargs))
            return clients[-1]
    else:
        url = request.getfixturevalue("services").redis_url

        def new(**kwargs: Any) -> aioredis.Redis:
            clients.append(aioredis.Redis.from_url(url, **kwargs))
            return clients[-1]

    yield new
    for client in clients:
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"{NAMESPACE_PREFIX}:simgw-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def redis_client(connect: Connect, prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = connect()
    yield client
    await delete_state(client, prefix)


@pytest.fixture
def gw(redis_client: aioredis.Redis, prefix: str) -> SimulatedGateway:
    return SimulatedGateway(redis_client, prefix)


# --- one process: on fakeredis and on the real Redis --------------------------------------


async def test_visa_charge_succeeds_and_moves_money_once(gw: SimulatedGateway) -> None:
    req = charge_request(amount="25.50")
    result = await gw.charge(req)
    assert isinstance(result, ChargeSucceeded)
    assert result.gateway_ref.startswith("pi_sim_")
    assert await gw.charges_made(req.idempotency_key) == 1
    [entry] = await gw.all_charges()
    assert entry["idempotency_key"] == req.idempotency_key
    assert entry["account_id"] == "acct-1"
    assert entry["amount"] == "25.50"
    assert entry["currency"] == "USD"
    assert entry["payment_method"] == "pm_card_visa"
    assert entry["result"] == "succeeded"
    assert await gw.total_charged() == Decimal("25.50")


@pytest.mark.parametrize(
    ("payment_method", "code"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_authenticationRequired", "authentication_required"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
        ("pm_card_never_heard_of_it", "card_declined"),
    ],
)
async def test_declining_cards_fail_without_moving_money(
    gw: SimulatedGateway, payment_method: str, code: str
) -> None:
    req = charge_request(payment_method)
    result = await gw.charge(req)
    assert isinstance(result, ChargeFailed)
    assert result.code == code
    assert result.gateway_ref is not None
    assert await gw.charges_made(req.idempotency_key) == 0
    assert [c["result"] for c in await gw.all_charges()] == ["failed"]
    assert await gw.total_charged() == Decimal(0)
    # A decline is a stored result like Stripe's: the same key replays it.
    assert await gw.charge(req) == result


@pytest.mark.parametrize(
    ("payment_method", "amount"),
    [("card_visa", "25"), ("visa", "25"), ("pm_card_visa", "25.001"), ("pm_card_visa", "0")],
)
async def test_invalid_requests_are_config_errors_and_record_nothing(
    gw: SimulatedGateway, payment_method: str, amount: str
) -> None:
    req = charge_request(payment_method, amount=amount)
    with pytest.raises(GatewayConfigError):
        await gw.charge(req)
    assert await gw.all_charges() == []


async def test_same_key_twice_charges_once_and_returns_the_same_result(
    gw: SimulatedGateway,
) -> None:
    req = charge_request()
    first = await gw.charge(req)
    second = await gw.charge(req)
    assert first == second
    # 25 and 25.00 are the same request to a gateway that compares minor units.
    assert await gw.charge(charge_request(key=req.idempotency_key, amount="25")) == first
    assert await gw.charges_made(req.idempotency_key) == 1
    assert len(await gw.all_charges()) == 1


async def test_same_key_other_parameters_is_a_config_error(gw: SimulatedGateway) -> None:
    req = charge_request()
    await gw.charge(req)
    with pytest.raises(GatewayConfigError, match="idempotency"):
        await gw.charge(charge_request(key=req.idempotency_key, amount="30.00"))
    with pytest.raises(GatewayConfigError):
        await gw.charge(charge_request("pm_card_chargeDeclined", key=req.idempotency_key))
    assert await gw.charges_made(req.idempotency_key) == 1


async def charge_until_answered(
    gw: SimulatedGateway, req: ChargeRequest
) -> tuple[ChargeResult, int]:
    """What our retry loop does: the same key again after idempotency_key_in_use."""
    busy = 0
    while True:
        try:
            return await gw.charge(req), busy
        except TransientGatewayError as exc:
            assert "idempotency_key_in_use" in str(exc)
            busy += 1
            await asyncio.sleep(0.005)


async def test_concurrent_calls_with_one_key_charge_exactly_once(
    connect: Connect, redis_client: aioredis.Redis, prefix: str
) -> None:
    # Separate clients and gateway objects stand in for separate worker processes.
    gateways = [SimulatedGateway(connect(), prefix, latency_s=0.05) for _ in range(4)]
    req = charge_request()
    outcomes = await asyncio.gather(
        *(charge_until_answered(gateways[i % 4], req) for i in range(40))
    )
    results = {result for result, _ in outcomes}
    assert len(results) == 1
    assert isinstance(results.pop(), ChargeSucceeded)
    assert sum(busy for _, busy in outcomes) > 0  # the in-progress path was exercised
    assert await gateways[0].charges_made(req.idempotency_key) == 1
    assert len(await gateways[0].all_charges()) == 1


async def wait_until_exists(client: aioredis.Redis, key: str, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if await client.exists(key):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{key} never appeared")


async def test_key_in_progress_is_transient(redis_client: aioredis.Redis, prefix: str) -> None:
    slow = SimulatedGateway(redis_client, prefix, latency_s=0.3)
    req = charge_request()
    first = asyncio.create_task(slow.charge(req))
    await wait_until_exists(redis_client, f"{prefix}:lock:{req.idempotency_key}")
    with pytest.raises(TransientGatewayError, match="idempotency_key_in_use"):
        await slow.charge(req)
    result = await first
    assert await slow.charge(req) == result
    assert await slow.charges_made(req.idempotency_key) == 1


async def test_cancelled_call_releases_its_key(redis_client: aioredis.Redis, prefix: str) -> None:
    slow = SimulatedGateway(redis_client, prefix, latency_s=0.3)
    req = charge_request()
    task = asyncio.create_task(slow.charge(req))
    await wait_until_exists(redis_client, f"{prefix}:lock:{req.idempotency_key}")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await slow.charges_made(req.idempotency_key) == 0
    assert isinstance(await slow.charge(req), ChargeSucceeded)  # no wait for a TTL
    assert await slow.charges_made(req.idempotency_key) == 1


@pytest.mark.parametrize("fault", ["timeout", "rate_limit", "server_error"])
async def test_transient_faults_happen_before_any_charge(
    gw: SimulatedGateway, redis_client: aioredis.Redis, prefix: str, fault: str
) -> None:
    await inject_faults(redis_client, prefix, fault)
    req = charge_request()
    with pytest.raises(TransientGatewayError):
        await gw.charge(req)
    assert await gw.charges_made(req.idempotency_key) == 0
    assert isinstance(await gw.charge(req), ChargeSucceeded)  # the fault was consumed
    assert await gw.charges_made(req.idempotency_key) == 1


async def test_config_error_fault(
    gw: SimulatedGateway, redis_client: aioredis.Redis, prefix: str
) -> None:
    await inject_faults(redis_client, prefix, "config_error")
    req = charge_request()
    with pytest.raises(GatewayConfigError):
        await gw.charge(req)
    assert await gw.all_charges() == []


async def test_lost_response_then_retry_returns_the_recorded_charge(
    gw: SimulatedGateway, redis_client: aioredis.Redis, prefix: str
) -> None:
    await inject_faults(redis_client, prefix, "lost_response")
    req = charge_request()
    with pytest.raises(TransientGatewayError):
        await gw.charge(req)
    assert await gw.charges_made(req.idempotency_key) == 1  # money moved, caller never heard
    [entry] = await gw.all_charges()
    retry = await gw.charge(req)
    assert retry == ChargeSucceeded(gateway_ref=entry["gateway_ref"])
    assert await gw.charges_made(req.idempotency_key) == 1


async def test_decline_fault_and_fault_order(
    gw: SimulatedGateway, redis_client: aioredis.Redis, prefix: str
) -> None:
    await inject_faults(redis_client, prefix, "timeout", "decline")
    with pytest.raises(TransientGatewayError):
        await gw.charge(charge_request())
    declined = await gw.charge(charge_request())
    assert isinstance(declined, ChargeFailed) and declined.code == "card_declined"
    assert isinstance(await gw.charge(charge_request()), ChargeSucceeded)


async def test_a_none_fault_lets_one_call_through_so_the_next_one_can_fail(
    gw: SimulatedGateway, redis_client: aioredis.Redis, prefix: str
) -> None:
    await inject_faults(redis_client, prefix, "none", "decline")
    assert isinstance(await gw.charge(charge_request()), ChargeSucceeded)
    declined = await gw.charge(charge_request())
    assert isinstance(declined, ChargeFailed) and declined.code == "card_declined"
    assert not await redis_client.exists(f"{prefix}:faults")


async def test_inject_unknown_fault_is_refused(redis_client: aioredis.Redis, prefix: str) -> None:
    with pytest.raises(ValueError, match="unknown simulated faults"):
        await inject_faults(redis_client, prefix, "timeout", "meteor")
    assert not await redis_client.exists(f"{prefix}:faults")


async def test_works_with_decoded_responses(connect: Connect, prefix: str) -> None:
    client = connect(decode_responses=True)
    try:
        gw = SimulatedGateway(client, prefix)
        await inject_faults(client, prefix, "lost_response")
        req = charge_request()
        with pytest.raises(TransientGatewayError):
            await gw.charge(req)
        assert isinstance(await gw.charge(req), ChargeSucceeded)
        assert await gw.charges_made(req.idempotency_key) == 1
    finally:
        await delete_state(client, prefix)


# --- real processes sharing the real Redis -------------------------------------------------

# One "worker": charges the key, retrying idempotency_key_in_use like our retry loop does,
# and prints the result as JSON.
WORKER = """
import asyncio, json, sys
from decimal import Decimal
import redis.asyncio as aioredis
from common.gateway import ChargeRequest, TransientGatewayError
from common.gateway.simulated import SimulatedGateway

async def main(url, prefix, key, latency):
    client = aioredis.Redis.from_url(url)
    gw = SimulatedGateway(client, prefix, latency_s=latency, lock_ttl_s=1.0)
    req = ChargeRequest(key, "acct-mp", Decimal("40.00"), "USD", "cus_sim_acct-mp", "pm_card_visa")
    busy = 0
    while True:
        try:
            result = await gw.charge(req)
            break
        except TransientGatewayError:
            busy += 1
            await asyncio.sleep(0.005)
    print(json.dumps({"ref": result.gateway_ref, "busy": busy}), flush=True)
    await client.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
"""


def spawn(redis_url: str, prefix: str, key: str, latency_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, redis_url, prefix, key, str(latency_s)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
async def real_redis(services: Services, prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(services.redis_url)
    yield client
    await delete_state(client, prefix)
    await client.aclose()


async def test_processes_racing_on_one_key_charge_once(
    services: Services, real_redis: aioredis.Redis, prefix: str
) -> None:
    key = f"recharge-{uuid.uuid4().hex}-1"
    procs = [spawn(services.redis_url, prefix, key, 0.05) for _ in range(6)]
    outputs = [await asyncio.to_thread(p.communicate, timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    answers = [json.loads(out) for out, _ in outputs]
    assert len({a["ref"] for a in answers}) == 1
    gw = SimulatedGateway(real_redis, prefix)
    assert await gw.charges_made(key) == 1
    assert await gw.total_charged() == Decimal("40.00")


async def test_state_survives_a_sigkilled_caller(
    services: Services, real_redis: aioredis.Redis, prefix: str
) -> None:
    key = f"recharge-{uuid.uuid4().hex}-1"
    victim = spawn(services.redis_url, prefix, key, 0.5)
    lock = f"{prefix}:lock:{key}"
    deadline = time.monotonic() + 20
    while not await real_redis.exists(lock):
        assert time.monotonic() < deadline, "the worker never took the key"
        await asyncio.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    await asyncio.to_thread(victim.wait, 10)

    gw = SimulatedGateway(real_redis, prefix)
    req = ChargeRequest(key, "acct-mp", Decimal("40.00"), "USD", "cus_sim_acct-mp", "pm_card_visa")
    # The dead caller's in-progress marker outlives it briefly: Stripe's 409, retried.
    with pytest.raises(TransientGatewayError, match="idempotency_key_in_use"):
        await gw.charge(req)
    assert await gw.charges_made(key) == 0
    while True:
        assert time.monotonic() < deadline, "the marker of the killed worker never expired"
        try:
            result = await gw.charge(req)
            break
        except TransientGatewayError:
            await asyncio.sleep(0.05)
    assert isinstance(result, ChargeSucceeded)
    assert await gw.charges_made(key) == 1


async def test_an_expired_key_is_found_by_find_charge_from_another_client(
    services: Services, real_redis: aioredis.Redis, prefix: str
) -> None:
    """record_ttl_s is Stripe's pruning by the clock; the executed record outlives it."""
    key = f"recharge-{uuid.uuid4().hex}-1"
    req = ChargeRequest(key, "acct-mp", Decimal("40.00"), "USD", "cus_sim_acct-mp", "pm_card_visa")
    first = await SimulatedGateway(real_redis, prefix, record_ttl_s=1).charge(req)
    assert isinstance(first, ChargeSucceeded)
    deadline = time.monotonic() + 10
    while await real_redis.exists(f"{prefix}:idem:{key}"):
        assert time.monotonic() < deadline, "the idempotency record never expired"
        await asyncio.sleep(0.1)

    other = aioredis.Redis.from_url(services.redis_url)  # another worker process's client
    try:
        gw = SimulatedGateway(other, prefix)
        assert await gw.find_charge(req) == first
        assert await gw.charges_made(key) == 1
    finally:
        await other.aclose()
