"""`contacto-billing db upgrade`."""

from __future__ import annotations

import argparse
from typing import Any

from common.db.migrate import upgrade
from config.settings import get_settings


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_cmd", required=True)
    up = db.add_parser("upgrade", help="create the database if missing and apply migrations")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_upgrade)


def _upgrade(args: argparse.Namespace) -> int:
    upgrade(get_settings(), args.revision)
    print("database is up to date")
    return 0
