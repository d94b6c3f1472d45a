"""Helpers shared by the command modules: errors, JSON output, argument types."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from common.money import MoneyError, format_amount, parse_amount

T = TypeVar("T")

EXIT_REFUSED = 1
EXIT_SETUP = 2


class CliError(Exception):
    """A refusal the user can act on: printed as one line on stderr, exit status 1."""


class SetupError(Exception):
    """The environment is wrong (a service that does not answer, a missing setting): printed as
    one line on stderr, exit status 2, so that scripts can tell it from a refusal."""


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
