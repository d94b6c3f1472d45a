"""Fixtures shared by the Redis-facing integration tests (each file defines `qsettings`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from common.broker.factory import build_broker
from config.settings import Settings
from tests.support.stripe_double import double, localstripe  # noqa: F401  (fixtures)


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
    b = build_broker(qsettings)
    yield b
    b.client.close()
