"""Helpers shared by the command modules: errors, JSON output, argument types."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine
from decimal import Decimal
from typing import Any, TypeVar

# Re-exported: the command modules import it from here.
from common.jsonable import to_jsonable as to_jsonable
from common.money import MoneyError, parse_amount

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


def print_json(value: Any) -> None:
    json.dump(to_jsonable(value), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def amount_arg(text: str) -> Decimal:
    """argparse type for money: the same strict parser as the usage messages."""
    try:
        return parse_amount(text)
    except MoneyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
