"""When the relay drains the outbox after a notification.

A message for a worker (a recharge run, a failure to count) is published at once: a charge waits
on it. A notification that announces only domain events (`recharge.succeeded` after each
credit, `balance.low`…) starts a short timer instead, and whatever else commits meanwhile goes
out in the same drain. Forty accounts crossing their threshold together credited forty
recharges one by one, and the relay drained once for each: four statements, a Redis call and a
log line every few milliseconds, on the two cores the charges themselves needed
(docs/performance.md, "The crossing, third pass").
"""

from __future__ import annotations

import asyncio

from common.names import NOTIFY_EVENT


class Wake:
    """Sets `event` for the relay's loop; `event_delay_s` 0 drains at once for events too."""

    def __init__(self, event: asyncio.Event, event_delay_s: float) -> None:
        self.event = event
        self._event_delay_s = event_delay_s
        self._timer: asyncio.TimerHandle | None = None

    def notified(self, payload: str) -> None:
        """A notification arrived (asyncpg's listener callback, on the loop's thread)."""
        if payload != NOTIFY_EVENT or self._event_delay_s <= 0:
            # A message, or a notification from a writer that does not say (an older release
            # during a deployment): publish now.
            self.event.set()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._event_delay_s, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.event.set()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
