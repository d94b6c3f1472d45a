"""Helpers shared by the command modules: errors, JSON output, an engine for one command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db.engine import create_engine, raw_connection
from common.money import MoneyError, format_amount, parse_amount
from config.settings import Settings, get_settings

T = TypeVar("T")
Handler = Callable[[argparse.Namespace], int | None]


class CliError(Exception):
    """A refusal the user can act on: printed as one line on stderr, exit status 1."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format_amount(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    json.dump(to_jsonable(value), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def amount_arg(text: str) -> Decimal:
    """argparse type for money: the same strict parser as the usage messages."""
    try:
        return parse_amount(text)
    except MoneyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@asynccontextmanager
async def engine_for(settings: Settings | None = None) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings or get_settings(), pool_size=1)
    try:
        yield engine
    finally:
        await engine.dispose()


async def with_conn(fn: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
    """Run `fn` on one connection of a short-lived engine (one CLI command)."""
    async with engine_for() as engine, raw_connection(engine) as conn:
        return await fn(conn)
