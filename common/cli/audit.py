"""`contacto-billing audit [--json]`: exits 1 with the offending rows when an invariant fails."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table
from rich.text import Text

from common.audit import CheckResult, dead_letters_check, run_audit
from common.cli._common import SetupError, print_json, run, to_jsonable
from common.cli._connect import redis_client, with_conn
from common.cli._render import render_table, show
from config.settings import get_settings

DONE = "audit: all invariants hold"
BROKEN = "audit: invariants broken (see FAIL above)"


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="check the ledger and recharge invariants")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=100, help="offending rows shown per check")
    p.set_defaults(func=_audit)


def _audit(args: argparse.Namespace) -> int:
    settings = get_settings()
    results = run(with_conn(lambda c: run_audit(c, args.limit)))
    try:
        with redis_client(settings) as client:
            results.append(dead_letters_check(client, settings, args.limit))
    except SetupError as exc:  # Redis down: the audit says so, as a check that could not pass
        results.append(
            CheckResult("dead_letters_handled", "dead letters (Redis)", [{"error": str(exc)}])
        )
    ok = all(r.ok for r in results)
    if args.json:
        print_json(
            {
                "ok": ok,
                "checks": [
                    {
                        "name": r.name,
                        "ok": r.ok,
                        "description": r.description,
                        "offending": r.offending,
                    }
                    for r in results
                ],
            }
        )
        return 0 if ok else 1
    checks = render_table(
        ["RESULT", "CHECK", "WHAT MUST HOLD"],
        [[_verdict(r), r.name, r.description] for r in results],
        left=3,
        wrap=True,
    )
    show(checks)
    for r in results:
        if not r.ok:
            show(Text(""), Text(f"{r.name}: {len(r.offending)} offending row(s)"), _rows(r))
    show(Text(""), Text(DONE if ok else BROKEN))
    return 0 if ok else 1


def _verdict(result: CheckResult) -> Text:
    return Text("OK", style="green") if result.ok else Text("FAIL", style="bold red")


def _rows(result: CheckResult) -> Table:
    """A check's offending rows; each check has columns of its own."""
    rows = to_jsonable(result.offending)
    headers = list(dict.fromkeys(key for row in rows for key in row))
    return render_table(
        [h.upper().replace("_", "-") for h in headers],
        [["-" if row.get(h) is None else str(row[h]) for h in headers] for row in rows],
        left=len(headers),
    )
