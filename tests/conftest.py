"""Shared fixtures: a database of its own per test session, Redis namespaces per test.

The environment is set at import, before anything reads settings, so that in-process code and
the worker processes the tests start see the same database and Redis keys.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import redis

RUN_ID = uuid.uuid4().hex[:10]
TEST_DB = f"contacto_test_{RUN_ID}"
PG_ADMIN_URL = os.environ.get("CONTACTO_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("CONTACTO_TEST_REDIS", "redis://127.0.0.1:6379/0")
NAMESPACE_PREFIX = f"contacto-test-{RUN_ID}"

os.environ.update(
    {
        "DATABASE_URL": f"{PG_ADMIN_URL}/{TEST_DB}",
        "REDIS_URL": REDIS_URL,
        "CONTACTO_BROKER_NAMESPACE": f"{NAMESPACE_PREFIX}-default",
        "CONTACTO_EVENTS_STREAM": f"{NAMESPACE_PREFIX}:events",
        "LOG_FORMAT": "json",
        "PAYMENT_GATEWAY": "simulated",
    }
)
os.environ.pop("STRIPE_API_KEY", None)
os.environ.pop("STRIPE_API_BASE", None)

from common.db.engine import create_engine, raw_connection  # noqa: E402
from common.db.migrate import upgrade  # noqa: E402
from config.settings import Settings, get_settings  # noqa: E402


@pytest.fixture(scope="session")
def settings() -> Settings:
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session", autouse=True)
def database(settings: Settings) -> Iterator[str]:
    upgrade(settings)
    yield TEST_DB

    async def drop() -> None:
        conn = await asyncpg.connect(f"{PG_ADMIN_URL}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="session", autouse=True)
def redis_cleanup() -> Iterator[None]:
    yield
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{NAMESPACE_PREFIX}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[Any]:
    eng = create_engine(settings, pool_size=5)
    yield eng
    await eng.dispose()


@pytest.fixture
async def conn(engine: Any) -> AsyncIterator[asyncpg.Connection[Any]]:
    async with raw_connection(engine) as c:
        yield c


@pytest.fixture
def namespace() -> str:
    """A dramatiq namespace of the test's own: its queues start empty."""
    return f"{NAMESPACE_PREFIX}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def test_settings(namespace: str) -> Settings:
    return Settings(CONTACTO_BROKER_NAMESPACE=namespace)  # type: ignore[call-arg]


def new_account_id(prefix: str = "acct") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
