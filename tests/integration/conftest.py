"""The integration tier: real PostgreSQL and Redis (see tests/support/services.py), and the
fixtures shared by the Redis-facing tests (each file defines `qsettings`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from common.broker.factory import build_redis_broker
from config.settings import Settings
from tests.support.stripe_double import (  # noqa: F401  (fixtures)
    double,
    localstripe,
    localstripe_gateway,
)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.import_plugin("tests.support.services")


@pytest.fixture(scope="session", autouse=True)
def _services_ready(database: str, redis_cleanup: None) -> None:
    """The session's database migrated (dropped at the end), its Redis keys removed at the end."""


@pytest.fixture
def client(qsettings: Settings, namespace: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(qsettings.redis_url)
    yield c
    keys = list(c.scan_iter(match=f"{namespace}:*"))
    if keys:
        c.delete(*keys)
    c.close()


@pytest.fixture
def broker(qsettings: Settings, client: redis.Redis) -> Iterator[RedisBroker]:
    b = build_redis_broker(qsettings)
    yield b
    b.client.close()
