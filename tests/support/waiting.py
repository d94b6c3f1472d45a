"""Async polling for end-to-end tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout_s: float = 60,
    what: str = "",
) -> T:
    deadline = time.monotonic() + timeout_s
    value = await probe()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: last {value!r}")
        await asyncio.sleep(0.1)
        value = await probe()
    return value


async def until_true(
    predicate: Callable[[], bool],
    *,
    timeout_s: float = 10,
    interval_s: float = 0.01,
    what: str = "",
) -> None:
    """Wait for an in-process condition (set by a callback on the loop) to hold."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)
