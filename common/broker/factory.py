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
from common.broker.rabbitmq import QuorumRabbitmqBroker
from common.broker.stopping import DaemonAsyncIO, GracefulStop
from config.settings import Settings, get_settings

# A recharge run may wait on a slow gateway several times; anything longer is stuck.
ACTOR_TIME_LIMIT_MS = 5 * 60 * 1000


def build_broker(
    settings: Settings | None = None,
    *,
    extra_middleware: Iterable[Middleware] = (),
    broker_class: type[RedisBroker] = SiftingRedisBroker,
) -> dramatiq.Broker:
    """The broker of BROKER_URL: RabbitMQ for amqp://, else Redis (BROKER_URL or REDIS_URL).

    `broker_class`: on Redis, see build_redis_broker.
    """
    settings = settings or get_settings()
    if settings.broker_is_rabbitmq:
        assert settings.broker_url is not None
        return QuorumRabbitmqBroker(
            url=settings.broker_url,
            middleware=_middleware(settings, extra_middleware),
            dead_message_ttl_ms=settings.dead_message_ttl_ms,
        )
    return build_redis_broker(
        settings, extra_middleware=extra_middleware, broker_class=broker_class
    )


def build_redis_broker(
    settings: Settings | None = None,
    *,
    extra_middleware: Iterable[Middleware] = (),
    client: Any = None,
    broker_class: type[RedisBroker] = SiftingRedisBroker,
) -> RedisBroker:
    """The Redis broker whatever BROKER_URL says: for what only Redis has (tests' fakeredis
    `client`, the key layout `queues` and `dlq` read).

    `broker_class`: acks are grouped (common/broker/grouped_acks.py) and what a consumer
    cannot run is put aside with its reason (common/broker/poison.py); the benchmark's
    reference no-op worker passes dramatiq's stock RedisBroker.
    """
    settings = settings or get_settings()
    kwargs: dict[str, Any] = {
        "middleware": _middleware(settings, extra_middleware),
        "namespace": settings.broker_namespace,
        # 15 s and 100 per million by default, not dramatiq's 60 s and 1,000: the relay runs
        # the maintenance that hands a dead worker's messages back on a clock
        # (common/broker/maintenance.py), so recovery is bounded without rolling dice on
        # every worker command (docs/performance.md, "Broker maintenance").
        "heartbeat_timeout": settings.broker_heartbeat_timeout_ms,
        "maintenance_chance": settings.broker_maintenance_chance,
        "dead_message_ttl": settings.dead_message_ttl_ms,
    }
    if client is not None:
        kwargs["client"] = client
    else:
        kwargs["url"] = settings.broker_redis_url
    return broker_class(**kwargs)


def _middleware(settings: Settings, extra: Iterable[Middleware]) -> list[Middleware]:
    return [
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
        *extra,
    ]


def setup_broker(
    settings: Settings | None = None,
    *,
    extra_middleware: Iterable[Middleware] = (),
    broker_class: type[RedisBroker] = SiftingRedisBroker,
) -> dramatiq.Broker:
    """Build the broker and make it dramatiq's global one (worker modules call this first)."""
    broker = build_broker(settings, extra_middleware=extra_middleware, broker_class=broker_class)
    dramatiq.set_broker(broker)
    return broker
