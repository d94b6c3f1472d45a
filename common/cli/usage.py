"""`contacto-billing usage rejected`: what could not be applied, and why."""

from __future__ import annotations

import argparse
from typing import Any

from common.cli._common import print_json, run, to_jsonable
from common.cli._connect import with_conn
from common.cli._render import render_table, show
from common.usage.rejected import list_rejected


def register(sub: Any) -> None:
    usage = sub.add_parser("usage", help="usage events")
    us = usage.add_subparsers(dest="usage_cmd", required=True, metavar="ACTION")
    p = us.add_parser("rejected", help="usage that was kept with its reason instead of applied")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_rejected)


def _rejected(args: argparse.Namespace) -> int:
    rows = run(with_conn(lambda c: list_rejected(c, args.limit)))
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no rejected usage")
        return 0
    table = render_table(
        ["REJECTED AT", "EVENT", "ACCOUNT", "REASON"],
        [
            [r["rejected_at"][:19], r["event_id"] or "-", r["account_id"] or "-", r["reason"]]
            for r in to_jsonable(rows)
        ],
        left=4,
        wrap=True,
    )
    show(table)
    return 0
