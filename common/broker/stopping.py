"""Stopping a dramatiq worker process in order, however many times it is told to stop.

A process manager that signals the whole process group (systemd's `KillMode=control-group`,
honcho, most supervisors) makes every dramatiq worker process get SIGTERM twice: once from
the manager, once forwarded by dramatiq's main process. dramatiq's worker handler
(`dramatiq/cli.py`, `worker_process.termhandler`) takes the second one as "kill now" and raises
SystemExit in the main thread, which skips `worker.stop()`. The AsyncIO middleware's event-loop
thread is not a daemon, so the interpreter then waits for it forever, while the worker threads
(daemons, but alive as long as the process is) keep consuming messages, with resources that
nobody disposes.

Two middleware fix that, both installed by the broker factory:

* `GracefulStop` wraps the worker's stop handler: a stop signal repeated within
  `REPEAT_WINDOW_S` of the first is the same request delivered twice and is ignored, so the
  orderly stop (workers finish their message, prefetched messages are requeued, acks are sent,
  resources are disposed) goes on. A signal sent later is still dramatiq's deliberate "kill".
* `DaemonAsyncIO` runs the event loop in a daemon thread, so that no path out of the main
  thread (that "kill", a failed boot) can leave the process running.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog
import uvloop
from dramatiq.asyncio import EventLoopThread, get_event_loop_thread, set_event_loop_thread
from dramatiq.middleware import AsyncIO, Middleware

log = structlog.get_logger(__name__)

# The forwarded copy arrives milliseconds after the manager's signal, later only on a machine
# under heavy load. The price: someone who means "kill now" must wait 3 s before signalling
# again (or send SIGKILL, as process managers do after their timeout).
REPEAT_WINDOW_S = 3.0
# dramatiq's worker process treats each of these as "stop" (and SIGINT is ignored there).
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None
)

Handler = Callable[[int, FrameType | None], Any]


class RepeatFilter:
    """A signal handler that passes the first stop signal on and drops repeats within a window.

    `previous` maps each signal to the handler it replaces (dramatiq's). Pure apart from the
    clock (injectable), so the unit tests drive it without sending signals.
    """

    def __init__(
        self,
        previous: dict[int, Handler],
        *,
        window_s: float = REPEAT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.previous = previous
        self.window_s = window_s
        self.clock = clock
        self.first_at: float | None = None
        self.dropped = 0

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        now = self.clock()
        if self.first_at is not None and now - self.first_at < self.window_s:
            self.dropped += 1
            log.info(
                "worker.stop_repeated",
                signal=signal.Signals(signum).name,
                after_s=round(now - self.first_at, 3),
            )
            return None
        if self.first_at is None:
            self.first_at = now
        return self.previous[signum](signum, frame)


class GracefulStop(Middleware):
    """Make a repeated stop signal not abort a worker process's orderly shutdown (see above)."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        self.window_s = window_s

    def after_process_boot(self, broker: Any) -> None:
        # Emitted in each worker process right after dramatiq installed its handlers, in the
        # main thread (the only one that may set handlers). One filter for every stop signal:
        # dramatiq's worker has one stop state for them all too.
        if threading.current_thread() is not threading.main_thread():
            return
        previous: dict[int, Handler] = {}
        for sig in STOP_SIGNALS:
            handler = signal.getsignal(sig)
            if callable(handler):  # else default or ignored: not dramatiq's worker process
                previous[sig] = handler
        if not previous:
            return
        repeat_filter = RepeatFilter(previous, window_s=self.window_s)
        for signum in previous:
            signal.signal(signum, repeat_filter)


class UvloopEventLoopThread(EventLoopThread):
    """dramatiq's event-loop thread on uvloop, the loop the web process runs on too: an actor's
    time is mostly asyncpg and Redis round trips, and uvloop's transports cost a fraction of
    asyncio's (docs/performance.md, "The crossing, third pass")."""

    def __init__(self, logger: Any) -> None:
        super().__init__(logger)
        self.loop.close()  # the stock loop dramatiq made, never run
        self.loop = uvloop.new_event_loop()


class DaemonAsyncIO(AsyncIO):
    """dramatiq's AsyncIO middleware with its event loop (uvloop) in a daemon thread.

    The loop is still stopped and joined in after_worker_shutdown on an orderly stop, after
    the resources disposed their connections on it (after_* hooks run in reverse order, and
    ResourcesMiddleware comes after this one).
    """

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        thread = UvloopEventLoopThread(self.logger)
        thread.daemon = True
        thread.start(timeout=1.0)
        set_event_loop_thread(thread)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        thread = get_event_loop_thread()
        if thread is None:  # a failed boot stopped it already
            return
        thread.stop()  # type: ignore[no-untyped-call]
        thread.join()
        set_event_loop_thread(None)
