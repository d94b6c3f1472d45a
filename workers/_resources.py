"""Per-process resources (engine, async Redis, payment gateway), created at worker boot on the
worker's event loop and disposed on that same loop once the worker threads have finished.

Nothing connects at import time: `dramatiq workers.balance --processes 2` forks first, and a
connection made before the fork would be shared by every child. The gateway's HTTP client,
like the engine's pool, belongs to the loop that first uses it, hence creation on the loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from dramatiq.asyncio import get_event_loop_thread, set_event_loop_thread
from dramatiq.middleware import Middleware
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from common.db.engine import create_engine
from common.db.hotpool import HotPool
from common.gateway import PaymentGateway, build_gateway
from common.metrics import metrics
from config.settings import Settings
from workers._startup import EXIT_NOT_STARTED, NotStarted, check_schema

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    redis: aioredis.Redis
    gateway: PaymentGateway | None
    hot_pool: HotPool | None = None


_current: Resources | None = None


def resources() -> Resources:
    if _current is None:
        raise RuntimeError("worker resources are not started (is ResourcesMiddleware installed?)")
    return _current


def gateway() -> PaymentGateway:
    """The process's gateway, built on first use (on the loop: its HTTP client lives there)."""
    current = resources()
    if current.gateway is None:
        current.gateway = build_gateway(current.settings, current.redis)
    return current.gateway


_hot_pool_connections = 0


def use_hot_pool(connections: int) -> None:
    """Called by a worker module at import: its actors use hot_pool(), up to `connections` at
    once. The process's kept connections are the sum for the modules it runs (the Procfile
    runs one per process; the demo may run all three in one)."""
    global _hot_pool_connections
    _hot_pool_connections += connections


def hot_pool() -> HotPool:
    """The process's kept connections (common/db/hotpool.py), opened at boot."""
    current = resources()
    assert current.hot_pool is not None, "the worker module did not call use_hot_pool()"
    return current.hot_pool


class ResourcesMiddleware(Middleware):
    """Owns the engine, the async Redis client and the payment gateway of a worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # before, not after: dramatiq starts the worker threads before emitting after_worker_boot.
    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        global _current
        loop_thread = get_event_loop_thread()
        assert loop_thread is not None, "the AsyncIO middleware must come first"
        try:
            loop_thread.run_coroutine(check_schema(self.settings, unreachable_is_fatal=False))
        except NotStarted:
            # No worker will run: stop the loop now rather than leave it to the interpreter.
            loop_thread.stop()  # type: ignore[no-untyped-call]
            set_event_loop_thread(None)
            # No worker thread runs yet. dramatiq's main process sees this exit status, says the
            # worker "exited unexpectedly" and stops the rest.
            raise SystemExit(EXIT_NOT_STARTED) from None
        _current = loop_thread.run_coroutine(self._start())
        log.info("worker.resources_started")

    async def _start(self) -> Resources:
        redis = aioredis.Redis.from_url(self.settings.redis_url)
        engine = create_engine(self.settings)
        # Opened now rather than in the first messages: forty accounts crossing their threshold
        # at once were the charge worker's first work after a start, and waited for its
        # connections to open (docs/performance.md, "Latency"). Best effort: with PostgreSQL
        # down the worker starts anyway, connects on demand, and its messages are retried.
        pool = None
        if _hot_pool_connections:
            pool = HotPool(self.settings.asyncpg_dsn, _hot_pool_connections)
            await pool.open()
        else:
            await _open_pool(engine, self.settings.db_pool_size)
        return Resources(self.settings, engine, redis, None, pool)

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        # Our Prometheus metrics are made on first use, which cost a worker's first message
        # 18 ms (the import of prometheus_client and the registry): made now instead, once the
        # Prometheus middleware has chosen its storage. On the loop, where the actors use them.
        loop_thread = get_event_loop_thread()
        if _current is not None and loop_thread is not None:
            loop_thread.run_coroutine(_make_metrics())

    # after, not before: dramatiq emits before_worker_shutdown while the worker threads are
    # still running their messages, which would lose their engine mid-transaction. After
    # worker_shutdown every worker thread has finished (or timed out) and every ack was sent;
    # the event loop is still running (DaemonAsyncIO comes first, so its after hook runs last).
    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        global _current
        loop_thread = get_event_loop_thread()
        if _current is None or loop_thread is None:
            return
        current, _current = _current, None
        loop_thread.run_coroutine(_dispose(current))
        log.info("worker.resources_disposed")


async def _make_metrics() -> None:
    metrics()


async def _open_pool(engine: AsyncEngine, connections: int) -> None:
    """The engine's pool, for a worker without kept connections (the retry worker)."""

    async def one() -> AsyncConnection:
        return await engine.connect()

    opened = await asyncio.gather(*(one() for _ in range(connections)), return_exceptions=True)
    for conn in opened:
        if isinstance(conn, AsyncConnection):
            await conn.close()
        else:
            log.warning("db.pool_not_opened", error=str(conn)[:200])


async def _dispose(current: Resources) -> None:
    if current.hot_pool is not None:
        await current.hot_pool.close()
    if current.gateway is not None:
        await current.gateway.close()
    await current.redis.aclose()
    await current.engine.dispose()
