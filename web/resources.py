"""What one web worker process holds: its PostgreSQL connections, an async Redis client and
the broker.

Created in the app's lifespan (on the worker's own event loop, after uvicorn started the
process) and disposed when it shuts down; nothing connects at import or in the factory.

The connections are the balance worker's `HotPool` (common/db/hotpool.py), not SQLAlchemy's
pool: every request takes one, runs one or two statements by key and gives it back, and
SQLAlchemy's checkout and reset cost more than that (measured: 90 us of CPU per checkout, a
tenth of a whole request). The domain functions take the asyncpg connection either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import dramatiq
import redis.asyncio as aioredis
import structlog
from fastapi import FastAPI, Request

from common.broker.factory import build_broker
from common.db.hotpool import HotPool
from common.gateway import PaymentGateway
from common.gateway.factory import build_gateway
from config.settings import Settings, WebSettings
from web.token_cache import TokenCache

log = structlog.get_logger("web")

# Readiness probes give up after this long: a load balancer asks often.
PROBE_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Resources:
    settings: Settings
    web: WebSettings
    database: HotPool
    redis: aioredis.Redis
    broker: dramatiq.Broker
    tokens: TokenCache
    # Built at the console's first card or charge operation: the account API never needs it,
    # and PAYMENT_GATEWAY=stripe without a key must not stop the API from serving.
    _gateway: PaymentGateway | None = None

    def gateway(self) -> PaymentGateway:
        if self._gateway is None:
            self._gateway = build_gateway(self.settings, self.redis)
        return self._gateway

    def connection(self) -> AbstractAsyncContextManager[asyncpg.Connection[Any]]:
        """A kept connection for one request (dropped and replaced if it failed)."""
        return self.database.connection()

    async def check_postgres(self) -> None:
        async with asyncio.timeout(PROBE_TIMEOUT_S), self.connection() as conn:
            await conn.fetchval("SELECT 1")

    async def check_redis(self) -> None:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await self.redis.ping()


def open_resources(settings: Settings, web: WebSettings) -> Resources:
    return Resources(
        settings=settings,
        web=web,
        database=HotPool(settings.asyncpg_dsn, web.db_pool_size),
        # Short timeouts: a readiness probe must answer, not hang on a dead host.
        redis=aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=5
        ),
        # The one broker factory, as every process; only `enqueue` is used here.
        broker=build_broker(settings),
        tokens=TokenCache(settings.asyncpg_dsn, web.token_cache_s),
    )


async def close_resources(resources: Resources) -> None:
    await resources.tokens.close()
    if resources._gateway is not None:
        await resources._gateway.close()
    resources.broker.close()
    await resources.redis.aclose()
    await resources.database.close()


def lifespan(settings: Settings, web: WebSettings) -> Any:
    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        resources = open_resources(settings, web)
        app.state.resources = resources
        resources.tokens.start()
        log.info("web.ready", url=f"http://{web.host}:{web.port}", pool_size=web.db_pool_size)
        try:
            yield
        finally:
            await close_resources(resources)
            log.info("web.stopped")

    return run


def resources(request: Request) -> Resources:
    found: Resources = request.app.state.resources
    return found
