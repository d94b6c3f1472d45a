"""Entry point of the `contacto-billing` command."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from common.cli._common import CliError
from common.demo.envfile import stale_warning
from common.logging import configure_logging
from config.settings import get_settings

# Each module registers its own sub-commands; missing optional ones are skipped.
COMMAND_MODULES = (
    "common.cli.db",
    "common.cli.accounts",
    "common.cli.enqueue",
    "common.cli.usage",
    "common.cli.queues",
    "common.cli.dlq",
    "common.cli.audit",
    "common.cli.events",
    "common.cli.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contacto-billing", description="Contacto Billing: prepaid balances and auto-recharge."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except KeyboardInterrupt:  # Ctrl-C while the command modules are still importing
        return 130
    args = parser.parse_args(argv)
    # Values from a sourced .contacto/demo.env outlive the demo that wrote them: say so.
    if warning := stale_warning(os.environ):
        print(f"contacto-billing: warning: {warning}", file=sys.stderr)
    # Logs go to stderr (stdout is for results and --json); only warnings: a CLI is not a daemon.
    configure_logging(get_settings().log_format, level=logging.WARNING)
    try:
        code = args.func(args)
    except CliError as exc:
        print(f"contacto-billing: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except (ConnectionError, OSError) as exc:
        print(f"contacto-billing: error: cannot connect: {exc}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
