"""The e2e tier: real processes on real PostgreSQL and Redis (see tests/support/services.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from common.gateway.simulated import delete_state
from config.settings import Settings


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.import_plugin("tests.support.services")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """CONTACTO_TEST_BROKER=rabbitmq runs the tier on RabbitMQ (a vhost per test, see the
    `namespace` fixture), but for the tests that look into Redis's broker keys themselves;
    the tests of what RabbitMQ alone does (`rabbitmq_only`) run only then."""
    on_rabbitmq = os.environ.get("CONTACTO_TEST_BROKER") == "rabbitmq"
    skip_redis = pytest.mark.skip(reason="reads Redis's broker keys: Redis only")
    skip_rabbitmq = pytest.mark.skip(
        reason="RabbitMQ's own queues: CONTACTO_TEST_BROKER=rabbitmq only"
    )
    for item in items:
        if on_rabbitmq and item.get_closest_marker("redis_only"):
            item.add_marker(skip_redis)
        if not on_rabbitmq and item.get_closest_marker("rabbitmq_only"):
            item.add_marker(skip_rabbitmq)


@pytest.fixture(scope="session", autouse=True)
def _services_ready(database: str, redis_cleanup: None) -> None:
    """The session's database migrated (dropped at the end), its Redis keys removed at the end."""


@pytest.fixture
async def sim_prefix(settings: Settings) -> AsyncIterator[str]:
    """The simulated gateway's Redis prefix for one test, its state removed at the end."""
    prefix = f"test-simgw-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = aioredis.Redis.from_url(settings.redis_url)
    await delete_state(client, prefix)
    await client.aclose()
