"""The one broker factory. Every process (workers, relay, CLI, tests) builds its broker here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from common.broker.poison import SiftingRedisBroker
from common.broker.stopping import DaemonAsyncIO, GracefulStop
from config.settings import Settings, get_settings

# A recharge run may wait on a slow gateway several times; anything longer is stuck.
ACTOR_TIME_LIMIT_MS = 5 * 60 * 1000


def build_broker(
    settings: Settings | None = None,
    *,
    extra_middleware: Iterable[Middleware] = (),
    client: Any = None,
    broker_class: type[RedisBroker] = SiftingRedisBroker,
) -> RedisBroker:
    """Build a RedisBroker with explicit retry values.

    `client` lets fast unit tests pass a fakeredis client; everything else uses REDIS_URL.
    `broker_class`: acks are grouped (common/broker/grouped_acks.py) and what a consumer
    cannot run is put aside with its reason (common/broker/poison.py); the benchmark's
    reference no-op worker passes dramatiq's stock RedisBroker.
    """
    settings = settings or get_settings()
    middleware: list[Middleware] = [
        AgeLimit(),
        TimeLimit(time_limit=ACTOR_TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(
            max_retries=settings.retries_max,
            min_backoff=settings.retries_min_backoff_ms,
            max_backoff=settings.retries_max_backoff_ms,
        ),
        # A stop signal delivered twice (process group + dramatiq's forwarding) must not abort
        # the orderly stop (common/broker/stopping.py).
        GracefulStop(),
        # AsyncIO boots the event loop in before_worker_boot; resource middleware placed after
        # it can therefore create engines on that loop in its own before_worker_boot, and
        # dispose of them in after_worker_shutdown before the loop stops (after_* hooks run in
        # reverse order). Its thread is a daemon: it can never keep a process alive.
        DaemonAsyncIO(),
        CurrentMessage(),
        *extra_middleware,
    ]
    kwargs: dict[str, Any] = {
        "middleware": middleware,
        "namespace": settings.broker_namespace,
        "heartbeat_timeout": settings.broker_heartbeat_timeout_ms,
        "maintenance_chance": settings.broker_maintenance_chance,
        "dead_message_ttl": settings.dead_message_ttl_ms,
    }
    if client is not None:
        kwargs["client"] = client
    else:
        kwargs["url"] = settings.redis_url
    return broker_class(**kwargs)


def setup_broker(
    settings: Settings | None = None,
    *,
    extra_middleware: Iterable[Middleware] = (),
    broker_class: type[RedisBroker] = SiftingRedisBroker,
) -> RedisBroker:
    """Build the broker and make it dramatiq's global one (worker modules call this first)."""
    broker = build_broker(settings, extra_middleware=extra_middleware, broker_class=broker_class)
    dramatiq.set_broker(broker)
    return broker
