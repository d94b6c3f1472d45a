"""The web worker's memory of accepted tokens (web/token_cache.py): what it may remember, and
that a revocation, a lost listener or a check that raced a revocation makes it forget."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from common.credentials.tokens import Caller, create_token, revoke_token
from config.settings import Settings
from tests.support.factories import new_id
from tests.support.waiting import until_true
from web.token_cache import TokenCache

CALLER = Caller(1, "t", "sel", frozenset({"accounts:read"}))


async def listening_cache(settings: Settings, ttl_s: float = 60.0) -> TokenCache:
    cache = TokenCache(settings.asyncpg_dsn, ttl_s)
    cache.start()
    await until_true(lambda: cache.listening, what="the listener")
    return cache


async def test_nothing_is_remembered_until_the_listener_is_up(test_settings: Settings) -> None:
    cache = TokenCache(test_settings.asyncpg_dsn, 60.0)
    cache.put("x", CALLER, cache.generation)
    assert cache.get("x") is None


async def test_a_revocation_anywhere_makes_every_worker_forget(
    test_settings: Settings, conn: Any
) -> None:
    caches = [await listening_cache(test_settings) for _ in range(2)]
    try:
        issued = await create_token(conn, new_id("token"), ("accounts:read",))
        for cache in caches:
            cache.put(issued.token, CALLER, cache.generation)
            assert cache.get(issued.token) is CALLER
        await revoke_token(conn, issued.name)
        await until_true(
            lambda: all(cache.get(issued.token) is None for cache in caches),
            timeout_s=5,
            what="every cache to forget",
        )
    finally:
        for cache in caches:
            await cache.close()


async def test_a_check_that_raced_a_revocation_is_not_remembered(test_settings: Settings) -> None:
    cache = await listening_cache(test_settings)
    try:
        before = cache.generation
        cache.forget_all()  # what a notification does while the check is running
        cache.put("x", CALLER, before)
        assert cache.get("x") is None
    finally:
        await cache.close()


async def test_losing_the_listener_forgets_and_it_comes_back(
    test_settings: Settings, conn: Any
) -> None:
    cache = await listening_cache(test_settings)
    try:
        cache.put("x", CALLER, cache.generation)
        assert cache.get("x") is CALLER
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
        )
        await until_true(lambda: cache.get("x") is None, timeout_s=5, what="the loss")
        await until_true(lambda: cache.listening, what="the listener to come back")
    finally:
        await cache.close()


@pytest.mark.parametrize("ttl_s", [0.0, 0.05])
async def test_entries_expire(test_settings: Settings, ttl_s: float) -> None:
    cache = await listening_cache(test_settings, ttl_s) if ttl_s else TokenCache("", 0.0)
    try:
        cache.put("x", CALLER, cache.generation)
        await asyncio.sleep(ttl_s * 2)
        assert cache.get("x") is None
    finally:
        await cache.close()
