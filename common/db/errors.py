"""PostgreSQL error classes as this system treats them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

T = TypeVar("T")

# Input the database refused (a value out of range, a constraint): retrying cannot help.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)
# Lock cycles and serialization failures resolve by running the transaction again.
CONFLICT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


async def retry_conflicts(fn: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    for attempt in range(attempts):
        try:
            return await fn()
        except CONFLICT_ERRORS:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")
