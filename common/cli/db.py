"""`contacto-billing db upgrade`: says whether it created the database and what it applied."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg
from alembic.util import CommandError

from common.cli._common import CliError
from common.db.migrate import UpgradeResult, upgrade
from config.settings import get_settings


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_cmd", required=True)
    up = db.add_parser("upgrade", help="create the database if missing and apply migrations")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_upgrade)


def _upgrade(args: argparse.Namespace) -> int:
    try:
        result = upgrade(get_settings(), args.revision)
    except CommandError as exc:  # e.g. a revision that does not exist
        raise CliError(f"migration: {exc}") from None
    except asyncpg.PostgresError as exc:  # e.g. no right to create the database
        raise CliError(f"database refused: {exc}") from None
    print(describe(result))
    return 0


def describe(result: UpgradeResult) -> str:
    """e.g. `created database contacto; applied 0001, 0002 (now at 0002)`."""
    now = result.revision or "no revision"
    if not result.applied:
        created = f"created database {result.database}; " if result.created else ""
        return f"{created}database {result.database} is up to date ({now}); nothing applied"
    applied = f"applied {', '.join(result.applied)} (now at {now})"
    if result.created:
        return f"created database {result.database}; {applied}"
    return f"database {result.database}: {applied}"
