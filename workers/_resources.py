"""Per-process resources (engine, Redis, payment gateway), created at worker boot on the
worker's event loop and disposed on that same loop before it stops.

Nothing connects at import time: `dramatiq workers.balance --processes 2` forks first, and a
connection made before the fork would be shared by every child.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db.engine import create_engine
from config.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine


_current: Resources | None = None


def resources() -> Resources:
    if _current is None:
        raise RuntimeError("worker resources are not started (is ResourcesMiddleware installed?)")
    return _current


class ResourcesMiddleware(Middleware):
    """Owns the SQLAlchemy engine of a worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        # before, not after: dramatiq starts the worker threads before emitting after_worker_boot.
        global _current
        loop_thread = get_event_loop_thread()
        assert loop_thread is not None, "the AsyncIO middleware must come first"
        _current = loop_thread.run_coroutine(self._start())
        log.info("worker.resources_started")

    async def _start(self) -> Resources:
        # Created on the loop so that the pool's connections belong to it.
        return Resources(settings=self.settings, engine=create_engine(self.settings))

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        global _current
        loop_thread = get_event_loop_thread()
        if _current is None or loop_thread is None:
            return
        current, _current = _current, None
        loop_thread.run_coroutine(current.engine.dispose())
        log.info("worker.resources_disposed")
