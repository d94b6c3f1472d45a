"""What one web worker process holds: the engine, an async Redis client and the broker.

Created in the app's lifespan (on the worker's own event loop, after uvicorn started the
process) and disposed when it shuts down; nothing connects at import or in the factory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog
from dramatiq.brokers.redis import RedisBroker
from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from common.broker.factory import build_broker
from common.db.engine import create_engine, raw_connection
from config.settings import Settings, WebSettings

log = structlog.get_logger("web")

# Readiness probes give up after this long: a load balancer asks often.
PROBE_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Resources:
    settings: Settings
    web: WebSettings
    engine: AsyncEngine
    redis: aioredis.Redis
    broker: RedisBroker

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection[Any]]:
        """A pooled connection's asyncpg driver connection (as the CLI's commands use it)."""
        async with raw_connection(self.engine) as conn:
            yield conn

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
        engine=create_engine(settings, pool_size=web.db_pool_size),
        # Short timeouts: a readiness probe must answer, not hang on a dead host.
        redis=aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=5
        ),
        # The one broker factory, as every process; only `enqueue` is used here.
        broker=build_broker(settings),
    )


async def close_resources(resources: Resources) -> None:
    resources.broker.close()
    await resources.redis.aclose()
    await resources.engine.dispose()


def lifespan(settings: Settings, web: WebSettings) -> Any:
    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        resources = open_resources(settings, web)
        app.state.resources = resources
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
