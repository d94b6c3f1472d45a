"""Entry point of the `contacto-billing` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import suppress
from types import ModuleType

from pydantic import ValidationError

from common.cli._common import EXIT_REFUSED, EXIT_SETUP, CliError, SetupError
from common.db.unavailable import DatabaseUnavailable
from common.demo.envfile import stale_warning
from common.logging import configure_logging
from config.settings import get_settings, settings_problem


def command_modules() -> tuple[ModuleType, ...]:
    """Each module registers its own sub-commands, in this order in `--help`."""
    # Imported when called, not with this module: Ctrl-C during these slow imports is then
    # caught by main() instead of printing a traceback.
    from common.cli import (
        accounts,
        api_tokens,
        audit,
        db,
        demo,
        dlq,
        enqueue,
        events,
        queues,
        usage,
    )

    return (db, accounts, api_tokens, enqueue, usage, queues, dlq, audit, events, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contacto-billing", description="Contacto Billing: prepaid balances and auto-recharge."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in command_modules():
        module.register(sub)
    return parser


def _fail(message: str, code: int) -> int:
    print(f"contacto-billing: error: {message}", file=sys.stderr)
    return code


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises nothing more."""
    with suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except KeyboardInterrupt:
        return 130
    args = parser.parse_args(argv)
    # Values from a sourced .contacto/demo.env outlive the demo that wrote them: say so.
    if warning := stale_warning(os.environ):
        print(f"contacto-billing: warning: {warning}", file=sys.stderr)
    try:
        settings = get_settings()
    except ValidationError as exc:
        return _fail(settings_problem(exc), EXIT_SETUP)
    # Logs go to stderr (stdout is for results and --json); only warnings: a CLI is not a daemon.
    configure_logging(settings.log_format, level=logging.WARNING)
    try:
        code = args.func(args)
    except CliError as exc:
        return _fail(str(exc), EXIT_REFUSED)
    except (SetupError, DatabaseUnavailable) as exc:
        return _fail(str(exc), EXIT_SETUP)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`… | head`): not a connection problem, and nobody to tell.
        _drop_stdout()
        return 141  # what a shell reports for SIGPIPE
    except (ConnectionError, OSError) as exc:
        # A connection lost mid-command (the connect step itself is told more precisely).
        return _fail(f"cannot connect: {exc}", EXIT_SETUP)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
