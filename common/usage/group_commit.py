"""Group commit: many concurrently delivered messages, one database transaction.

Each dramatiq worker thread hands its message's work to `submit` and blocks until the
transaction holding it has committed; only then does the actor return and dramatiq ack the
message. Whatever arrives while a transaction is running waits for the next one, so under load
transactions grow and their count per message falls, without ever acknowledging work that is
not durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Work = TypeVar("Work")
Result = TypeVar("Result")


@dataclass(slots=True)
class _Pending(Generic[Work, Result]):
    work: Work
    size: int
    future: asyncio.Future[Result] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommitter(Generic[Work, Result]):
    """Runs `flush(works)` for everything pending, `max_in_flight` flushes at a time.

    `flush` returns one result per work item, in order, or raises: then every submitter of that
    group gets the exception (and dramatiq retries each message on its own).
    """

    def __init__(
        self,
        flush: Callable[[Sequence[Work]], Awaitable[Sequence[Result]]],
        *,
        max_group_size: int,
        max_in_flight: int = 2,
        overlap_min_size: int = 0,
    ) -> None:
        self._flush = flush
        self._max_group_size = max_group_size
        self._max_in_flight = max_in_flight
        # A second flush overlaps the first only when this much work waits: small messages
        # then keep coalescing into the next flush, big batches get two at once.
        self._overlap_min_size = overlap_min_size
        self._queued_size = 0
        self._queue: list[_Pending[Work, Result]] = []
        self._in_flight = 0
        # The loop keeps only weak references to tasks: these keep running flushes alive.
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, work: Work, size: int = 1) -> Result:
        pending: _Pending[Work, Result] = _Pending(work, size)
        self._queue.append(pending)
        self._queued_size += size
        self._kick()
        # Each submitter has a future of its own: cancelling one (dramatiq's time limit or
        # shutdown) leaves the flush, and the other submitters, alone.
        return await pending.future

    def _kick(self) -> None:
        while self._queue and (
            self._in_flight == 0
            or (
                self._in_flight < self._max_in_flight
                and self._queued_size >= self._overlap_min_size
            )
        ):
            group = self._take_group()
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take_group(self) -> list[_Pending[Work, Result]]:
        group: list[_Pending[Work, Result]] = []
        size = 0
        while self._queue and (not group or size + self._queue[0].size <= self._max_group_size):
            item = self._queue.pop(0)
            group.append(item)
            size += item.size
        self._queued_size -= size
        return group

    async def _run(self, group: list[_Pending[Work, Result]]) -> None:
        try:
            results = await self._flush([p.work for p in group])
        except BaseException as exc:
            for p in group:
                if not p.future.done():
                    p.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for p, result in zip(group, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
        finally:
            self._in_flight -= 1
            self._kick()
