"""Group commit: concurrent submissions share flushes; failures reach every waiter."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from common.usage.group_commit import GroupCommitter


async def test_concurrent_submissions_are_grouped_and_answered_in_order() -> None:
    groups: list[list[int]] = []

    async def flush(works: Sequence[int]) -> list[int]:
        groups.append(list(works))
        await asyncio.sleep(0.01)
        return [w * 10 for w in works]

    gc: GroupCommitter[int, int] = GroupCommitter(flush, max_group_size=100, max_in_flight=1)
    results = await asyncio.gather(*(gc.submit(i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert len(groups) < 50 and sorted(w for g in groups for w in g) == list(range(50))


async def test_group_size_is_bounded_by_the_sizes_given() -> None:
    groups: list[list[int]] = []

    async def flush(works: Sequence[int]) -> list[None]:
        groups.append(list(works))
        await asyncio.sleep(0)
        return [None] * len(works)

    gc: GroupCommitter[int, None] = GroupCommitter(flush, max_group_size=10, max_in_flight=1)
    await asyncio.gather(*(gc.submit(i, size=4) for i in range(9)))
    assert all(len(g) <= 2 for g in groups)


async def test_a_failed_flush_fails_each_waiter_of_that_group_only() -> None:
    calls = 0

    async def flush(works: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if 13 in works:
            raise RuntimeError("database down")
        return list(works)

    gc: GroupCommitter[int, int] = GroupCommitter(flush, max_group_size=1, max_in_flight=2)
    results = await asyncio.gather(*(gc.submit(i) for i in (12, 13, 14)), return_exceptions=True)
    assert results[0] == 12 and results[2] == 14
    assert isinstance(results[1], RuntimeError)
    assert calls == 3


async def test_nothing_is_answered_before_its_flush_finished() -> None:
    release = asyncio.Event()

    async def flush(works: Sequence[int]) -> list[int]:
        await release.wait()
        return list(works)

    gc: GroupCommitter[int, int] = GroupCommitter(flush, max_group_size=10)
    task = asyncio.ensure_future(gc.submit(1))
    await asyncio.sleep(0.02)
    assert not task.done()
    release.set()
    assert await task == 1


@pytest.mark.parametrize("in_flight", [1, 2, 4])
async def test_in_flight_limit_is_respected(in_flight: int) -> None:
    running = peak = 0

    async def flush(works: Sequence[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        running -= 1
        return list(works)

    gc: GroupCommitter[int, int] = GroupCommitter(flush, max_group_size=1, max_in_flight=in_flight)
    await asyncio.gather(*(gc.submit(i) for i in range(20)))
    assert peak == in_flight


async def test_a_second_flush_overlaps_only_when_enough_work_waits() -> None:
    running = peak = 0
    release = asyncio.Event()

    async def flush(works: Sequence[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return list(works)

    gc: GroupCommitter[int, int] = GroupCommitter(
        flush, max_group_size=1000, max_in_flight=2, overlap_min_size=100
    )
    small = [asyncio.ensure_future(gc.submit(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert peak == 1  # small work waits for the running flush and joins the next one
    big = asyncio.ensure_future(gc.submit(99, size=150))
    await asyncio.sleep(0.01)
    assert peak == 2  # enough work waiting: a second flush overlaps
    release.set()
    assert await asyncio.gather(*small, big) == [0, 1, 2, 3, 4, 99]
