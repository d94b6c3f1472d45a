"""When the relay drains after a notification (common/outbox/wake.py): messages at once, events
gathered for a few milliseconds."""

from __future__ import annotations

import asyncio

import pytest

from common.names import NOTIFY_EVENT, NOTIFY_MESSAGE
from common.outbox.wake import Wake

DELAY_S = 0.05


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("payload", [NOTIFY_MESSAGE, ""])
async def test_a_message_or_an_unlabelled_notification_wakes_the_relay_at_once(
    payload: str,
) -> None:
    wake = Wake(asyncio.Event(), DELAY_S)
    wake.notified(payload)
    assert wake.event.is_set()


async def test_events_wait_for_the_delay_and_share_one_drain() -> None:
    loop = asyncio.get_running_loop()
    wake = Wake(asyncio.Event(), DELAY_S)
    started = loop.time()
    for _ in range(5):
        wake.notified(NOTIFY_EVENT)
    assert not wake.event.is_set()
    assert await _set_within(wake.event, 1.0)
    assert loop.time() - started >= DELAY_S * 0.9
    # One timer for the five: after the relay cleared it, nothing sets it again.
    wake.event.clear()
    assert not await _set_within(wake.event, DELAY_S * 3)


async def test_a_message_during_the_delay_wakes_at_once() -> None:
    wake = Wake(asyncio.Event(), DELAY_S)
    wake.notified(NOTIFY_EVENT)
    wake.notified(NOTIFY_MESSAGE)
    assert wake.event.is_set()


async def test_no_delay_set_publishes_events_at_once() -> None:
    wake = Wake(asyncio.Event(), 0)
    wake.notified(NOTIFY_EVENT)
    assert wake.event.is_set()


async def test_close_cancels_a_pending_timer() -> None:
    wake = Wake(asyncio.Event(), DELAY_S)
    wake.notified(NOTIFY_EVENT)
    wake.close()
    assert not await _set_within(wake.event, DELAY_S * 3)
