"""The simulated gateway shared by real OS processes: one charge per key, state outlives SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from common.gateway import ChargeRequest, ChargeSucceeded, TransientGatewayError
from common.gateway.simulated import SimulatedGateway, delete_state
from tests.conftest import NAMESPACE_PREFIX, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]

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


def spawn(prefix: str, key: str, latency_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, REDIS_URL, prefix, key, str(latency_s)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    value = f"{NAMESPACE_PREFIX}:simgw-mp-{uuid.uuid4().hex[:8]}"
    yield value
    await delete_state(redis_client, value)


async def test_processes_racing_on_one_key_charge_once(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    key = f"recharge-{uuid.uuid4().hex}-1"
    procs = [spawn(prefix, key, 0.05) for _ in range(6)]
    outputs = [await asyncio.to_thread(p.communicate, timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    answers = [json.loads(out) for out, _ in outputs]
    assert len({a["ref"] for a in answers}) == 1
    gw = SimulatedGateway(redis_client, prefix)
    assert await gw.charges_made(key) == 1
    assert await gw.total_charged() == Decimal("40.00")


async def test_state_survives_a_sigkilled_caller(redis_client: aioredis.Redis, prefix: str) -> None:
    key = f"recharge-{uuid.uuid4().hex}-1"
    victim = spawn(prefix, key, 0.5)
    lock = f"{prefix}:lock:{key}"
    deadline = time.monotonic() + 20
    while not await redis_client.exists(lock):
        assert time.monotonic() < deadline, "the worker never took the key"
        await asyncio.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    await asyncio.to_thread(victim.wait, 10)

    gw = SimulatedGateway(redis_client, prefix)
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
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """record_ttl_s is Stripe's pruning by the clock; the executed record outlives it."""
    key = f"recharge-{uuid.uuid4().hex}-1"
    req = ChargeRequest(key, "acct-mp", Decimal("40.00"), "USD", "cus_sim_acct-mp", "pm_card_visa")
    first = await SimulatedGateway(redis_client, prefix, record_ttl_s=1).charge(req)
    assert isinstance(first, ChargeSucceeded)
    deadline = time.monotonic() + 10
    while await redis_client.exists(f"{prefix}:idem:{key}"):
        assert time.monotonic() < deadline, "the idempotency record never expired"
        await asyncio.sleep(0.1)

    other = aioredis.Redis.from_url(REDIS_URL)  # another worker process's client
    try:
        gw = SimulatedGateway(other, prefix)
        assert await gw.find_charge(req) == first
        assert await gw.charges_made(key) == 1
    finally:
        await other.aclose()
