"""common/broker/stopping.py without processes: the repeat filter and the daemon loop thread."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

import fakeredis
from dramatiq.asyncio import get_event_loop_thread

from common.broker.factory import build_redis_broker
from common.broker.stopping import DaemonAsyncIO, RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_stop_signal_repeated_within_the_window_is_the_same_request() -> None:
    # Given dramatiq's handler behind the filter
    calls: list[int] = []

    def dramatiq_handler(signum: int, frame: FrameType | None) -> None:
        calls.append(signum)

    clock = Clock()
    handler = RepeatFilter({signal.SIGTERM: dramatiq_handler}, window_s=3, clock=clock)
    # When the group's SIGTERM and the forwarded copy arrive together
    handler(signal.SIGTERM, None)
    clock.now += 0.01
    handler(signal.SIGTERM, None)
    clock.now += 2.9
    handler(signal.SIGTERM, None)
    # Then dramatiq sees one stop request
    assert calls == [signal.SIGTERM] and handler.dropped == 2
    # And a signal sent on purpose later is dramatiq's "kill" again
    clock.now += 0.2
    handler(signal.SIGTERM, None)
    assert calls == [signal.SIGTERM, signal.SIGTERM]


def test_every_stop_signal_shares_one_state_and_keeps_its_own_handler() -> None:
    calls: list[tuple[str, int]] = []

    def term(signum: int, frame: FrameType | None) -> None:
        calls.append(("term", signum))

    def hup(signum: int, frame: FrameType | None) -> None:
        calls.append(("hup", signum))

    handler = RepeatFilter({signal.SIGTERM: term, signal.SIGHUP: hup}, clock=Clock())
    handler(signal.SIGHUP, None)
    handler(signal.SIGTERM, None)
    assert calls == [("hup", signal.SIGHUP)]


def test_the_event_loop_thread_is_a_daemon_and_stops_on_shutdown() -> None:
    broker = build_redis_broker(client=fakeredis.FakeRedis())
    asyncio_mw = next(m for m in broker.middleware if isinstance(m, DaemonAsyncIO))
    worker: Any = None
    asyncio_mw.before_worker_boot(broker, worker)
    thread = get_event_loop_thread()
    try:
        assert thread is not None and thread.daemon and thread.is_alive()
    finally:
        asyncio_mw.after_worker_shutdown(broker, worker)
    assert get_event_loop_thread() is None and not thread.is_alive()
    # A failed boot stopped it already: shutting down again is a no-op, not an error.
    asyncio_mw.after_worker_shutdown(broker, worker)
