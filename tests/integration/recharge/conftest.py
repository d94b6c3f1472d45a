"""The simulated gateway, on the real Redis, for the recharge engine's tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from common.gateway.simulated import SimulatedGateway, delete_state
from config.settings import Settings


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[SimulatedGateway]:
    client = aioredis.Redis.from_url(settings.redis_url)
    prefix = f"test-simgw-{uuid.uuid4().hex[:8]}"
    gw = SimulatedGateway(client, prefix)
    gw.prefix_for_tests = prefix  # type: ignore[attr-defined]
    yield gw
    await delete_state(client, prefix)
    await client.aclose()
