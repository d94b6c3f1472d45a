"""`contacto-billing audit [--json]`: exits 1 with the offending rows when an invariant fails."""

from __future__ import annotations

import argparse
from typing import Any

from common.audit import run_audit
from common.cli._common import print_json, run, to_jsonable, with_conn


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="check the ledger and recharge invariants")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=100, help="offending rows shown per check")
    p.set_defaults(func=_audit)


def _audit(args: argparse.Namespace) -> int:
    results = run(with_conn(lambda c: run_audit(c, args.limit)))
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
    for r in results:
        print(f"{'OK  ' if r.ok else 'FAIL'}  {r.name:<24} {r.description}")
        for row in to_jsonable(r.offending):
            print("        " + "  ".join(f"{k}={v}" for k, v in row.items()))
    print("audit: all invariants hold" if ok else "audit: invariants broken (see FAIL above)")
    return 0 if ok else 1
