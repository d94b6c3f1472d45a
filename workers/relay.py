"""Relay process: publishes what committed transactions wrote to the outbox.

Wakes on the `contacto_outbox` notification (sent at commit; for domain events alone, after
CONTACTO_RELAY_EVENT_DELAY_MS: common/outbox/wake.py) and polls every
CONTACTO_RELAY_POLL_INTERVAL_S anyway, so rows left by a crash, or notified while the relay
was down, go out too. Several relays may run: rows are claimed with SKIP LOCKED.

Beside publishing, on clocks of their own (a backlog of rows must not starve them):
dramatiq's broker maintenance every CONTACTO_BROKER_MAINTENANCE_INTERVAL_S, which gives a dead
worker's unacknowledged messages back to their queue (common/broker/maintenance.py), and the
reconciler every CONTACTO_RECONCILE_INTERVAL_S, which re-publishes the runs, failures and
re-checks whose message the broker lost (common/recharge/reconcile.py); on the same clock, with
PAYMENT_GATEWAY=stripe, the sweep that settles the customers' on-session 3-D Secure
confirmations their browser never reported (common/recharge/authentication.py).
Run: `python -m workers.relay` (the Procfile's `relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import uvloop
from dramatiq.brokers.redis import RedisBroker
from redis import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from common.broker.factory import build_broker
from common.broker.inspect import queue_stats
from common.broker.maintenance import run_maintenance
from common.db.engine import create_engine, raw_connection
from common.db.hotpool import HotPool
from common.gateway.base import GatewayConfigError
from common.gateway.factory import build_stripe_gateway
from common.gateway.stripe_gateway import StripeGateway
from common.logging import configure_logging
from common.metrics import metrics, serve
from common.names import OUTBOX_CHANNEL
from common.outbox.relay import Publisher, drain_once, outbox_lag, prune_sent
from common.outbox.wake import Wake
from common.recharge.authentication import sweep_once
from common.recharge.reconcile import ReconcileConfig, reconcile_once
from config.settings import Settings
from workers._startup import EXIT_NOT_STARTED, NotStarted, check_schema, load_settings

log = structlog.get_logger("workers.relay")
PRUNE_EVERY_S = 3600.0
GAUGES_EVERY_S = 5.0


async def run_relay(settings: Settings, stop: asyncio.Event) -> None:
    """Raises NotStarted (logged) when the database is not there or not migrated."""
    await check_schema(settings, unreachable_is_fatal=True)
    # The LISTEN connection, a reconciler pass and the gauges may each hold one.
    engine = create_engine(settings, pool_size=3)
    # Drains, one at a time, on a kept connection (common/db/hotpool.py): a burst of commits
    # is a drain every few milliseconds, and SQLAlchemy's checkout cost more than the claim.
    drains = HotPool(settings.asyncpg_dsn, 1)
    publisher = Publisher(
        broker=build_broker(settings),
        redis=Redis.from_url(settings.redis_url),
        stream=settings.events_stream,
        stream_maxlen=settings.events_stream_maxlen,
    )
    wake = asyncio.Event()
    waker = Wake(wake, settings.relay_event_delay_ms / 1000)
    last_prune = last_gauges = 0.0
    if settings.metrics_port:
        serve(settings.metrics_port)
    reconcile_config = ReconcileConfig.from_settings(settings)
    maintenance_s = settings.broker_maintenance_interval_s
    reconcile_s = settings.reconcile_interval_s

    broker = publisher.broker
    # The broker's own Redis (BROKER_URL may name another than REDIS_URL); RabbitMQ has none.
    broker_redis = (
        None if settings.broker_is_rabbitmq else Redis.from_url(settings.broker_redis_url)
    )

    async def maintain() -> None:
        assert isinstance(broker, RedisBroker)
        await asyncio.to_thread(run_maintenance, broker)

    async def reconcile() -> None:
        await reconcile_once(engine, broker_redis, settings.broker_namespace, reconcile_config)

    clocks = [asyncio.create_task(_every(reconcile_s, stop, "reconcile.failed", reconcile))]
    stripe = _stripe_for_sweep(settings)
    if stripe is not None:
        gateway = stripe  # bound for the closure, narrowed

        async def sweep() -> None:
            await sweep_once(
                engine,
                gateway,
                after_s=settings.authentication_sweep_after_s,
                give_up_after_s=settings.authentication_give_up_after_s,
            )

        clocks.append(
            asyncio.create_task(_every(reconcile_s, stop, "authentication.sweep_failed", sweep))
        )
    # RabbitMQ hands a dead consumer's messages back by itself: no maintenance to run.
    if isinstance(broker, RedisBroker):
        clocks.append(
            asyncio.create_task(_every(maintenance_s, stop, "broker.maintenance_failed", maintain))
        )
    try:
        async with raw_connection(engine) as listener:

            def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                waker.notified(payload)

            await listener.add_listener(OUTBOX_CHANNEL, on_notify)
            log.info(
                "relay.started",
                poll_interval_s=settings.relay_poll_interval_s,
                maintenance_interval_s=settings.broker_maintenance_interval_s,
                reconcile_interval_s=settings.reconcile_interval_s,
                reconcile_after_s=settings.reconcile_after_s,
            )
            while not stop.is_set():
                wake.clear()
                try:
                    published = await drain_once(drains, publisher, settings.relay_batch_size)
                except Exception:
                    log.exception("relay.publish_failed")
                    published = 0
                    await asyncio.sleep(settings.relay_poll_interval_s)
                if published >= settings.relay_batch_size:
                    continue  # more waiting: no sleep
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    await prune_sent(engine)
                if settings.metrics_port and time.monotonic() - last_gauges > GAUGES_EVERY_S:
                    last_gauges = time.monotonic()
                    await _update_gauges(engine, broker_redis, settings)
                await _wait_any(wake, stop, settings.relay_poll_interval_s)
            await listener.remove_listener(OUTBOX_CHANNEL, on_notify)
    finally:
        stop.set()
        waker.close()
        await asyncio.gather(*clocks, return_exceptions=True)
        publisher.redis.close()
        if broker_redis is not None:
            broker_redis.close()
        if stripe is not None:
            await stripe.close()
        await drains.close()
        await engine.dispose()
        log.info("relay.stopped")


def _stripe_for_sweep(settings: Settings) -> StripeGateway | None:
    """Stripe for the sweep of on-session confirmations, with PAYMENT_GATEWAY=stripe only: no
    other gateway's confirmation happens in a browser we may never hear from again. Without a
    key the relay still publishes (the charge worker, which needs one, refuses to start)."""
    if settings.payment_gateway != "stripe":
        return None
    try:
        return build_stripe_gateway(settings)
    except GatewayConfigError as exc:
        log.error("authentication.sweep_disabled", error=str(exc))
        return None


async def _every(
    interval_s: float, stop: asyncio.Event, failed: str, job: Callable[[], Awaitable[None]]
) -> None:
    """Run `job` every `interval_s` until `stop`; a failed run is logged and the clock goes on
    (Redis or PostgreSQL away for a while must not stop the relay)."""
    while not stop.is_set():
        try:
            await job()
        except Exception:
            log.exception(failed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)


async def _update_gauges(
    engine: AsyncEngine, broker_redis: Redis | None, settings: Settings
) -> None:
    """Outbox lag and queue depth, for dashboards: the relay already holds both connections.
    On RabbitMQ the queue gauges are RabbitMQ's own (its Prometheus plugin)."""
    try:
        unsent, lag_s = await outbox_lag(engine)
        stats = (
            []
            if broker_redis is None
            else await asyncio.to_thread(
                queue_stats,
                broker_redis,
                settings.broker_namespace,
                settings.broker_heartbeat_timeout_ms,
            )
        )
    except Exception:
        log.exception("metrics.update_failed")
        return
    m = metrics()
    m.outbox_unsent.set(unsent)
    m.outbox_lag_seconds.set(lag_s)
    for q in stats:
        for state in ("ready", "delayed", "in_flight", "dead"):
            m.queue_messages.labels(q.queue, state).set(getattr(q, state))
        m.queue_oldest_seconds.labels(q.queue).set(q.oldest_ready_age_s or 0)


async def _wait_any(a: asyncio.Event, b: asyncio.Event, timeout_s: float) -> None:
    waiters = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_format)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_relay(settings, stop)

    try:
        uvloop.run(_main())  # the event loop the workers and the web process run on
    except NotStarted:
        sys.exit(EXIT_NOT_STARTED)


if __name__ == "__main__":
    main()
