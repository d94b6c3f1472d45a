"""`python -m bench.chaos`: options, the table of what was injected and checked, the JSON, and
the exit status (1 on any violation)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from bench.chaos.checks import Check
from bench.chaos.run import Outcome, Run

# --small: the CI run, a few minutes on two shared cores.
SMALL = {
    "events": 2000,
    "accounts": 40,
    "kills": 5,
    "duration": 40.0,
    "settle_timeout": 60.0,
    "stop_timeout": 15.0,
}
FULL = {
    "events": 20000,
    "accounts": 200,
    "kills": 12,
    "duration": 150.0,
    "settle_timeout": 300.0,
    "stop_timeout": 20.0,
}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--small", action="store_true", help=f"the CI size: {SMALL}")
    p.add_argument("--events", type=int, help=f"distinct usage events (default {FULL['events']})")
    p.add_argument("--accounts", type=int, help=f"accounts (default {FULL['accounts']})")
    p.add_argument("--kills", type=int, help=f"SIGKILLs in all (default {FULL['kills']})")
    p.add_argument("--duration", type=float, help="seconds the load lasts (default 150)")
    p.add_argument(
        "--settle-timeout", type=float, help="seconds to wait for the pipeline to settle (300)"
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        help="seconds a process group has to exit after SIGTERM (default 20, --small 15)",
    )
    p.add_argument("--seed", type=int, default=12, help="the random choices (default 12)")
    p.add_argument(
        "--gateway-redis",
        default="redis://127.0.0.1:6379/0",
        help="the Redis of the simulated gateway's state, under a unique prefix removed at the "
        "end; not the run's own, which is flushed (default %(default)s)",
    )
    p.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                   help="an extra setting for every process (repeatable)")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the results there")
    p.add_argument("--workdir", type=Path, help="servers' data and logs (kept); default: a "
                   "temporary directory, removed after a clean run")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    sizes = SMALL if args.small else FULL
    for name, default in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.kills < 4:
        p.error("--kills must be at least 4: each kind is killed once")
    return args


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "none"
    return str(value)


def table(outcome: Outcome) -> Table:
    t = Table(title=f"chaos run {outcome.run}", box=box.ASCII, show_lines=False)
    t.add_column("", style="bold")
    t.add_column("what")
    t.add_column("result", overflow="fold")
    for key, value in outcome.injected.items():
        t.add_row("injected", key, _fmt(value))
    for check in outcome.checks:
        verdict = "ok" if check.ok else f"VIOLATED x{check.violation_count}"
        counts = _fmt(check.counts)
        t.add_row("checked", check.name, f"{verdict}; {counts}")
        for v in check.violations:
            t.add_row("", "", f"  {v}")
    return t


def as_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "run": outcome.run,
        "ok": outcome.ok,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in outcome.options.items()},
        "injected": outcome.injected,
        "checks": [
            {
                "name": c.name,
                "what": c.what,
                "ok": c.ok,
                "violations": c.violation_count,
                "examples": c.violations,
                "counts": c.counts,
            }
            for c in outcome.checks
        ],
        "settled_s": outcome.settled_s,
        "wall_s": outcome.wall_s,
        "timeline": outcome.timeline,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    run = Run(args)
    try:
        outcome = run.execute()
    except Exception as exc:  # the run broke: still a table, a JSON and a non-zero status
        traceback.print_exc()
        outcome = run.outcome
        crashed = Check("harness", "the run itself went to its end")
        crashed.violate(f"{type(exc).__name__}: {exc}"[:1000])
        outcome.checks.append(crashed)
    Console(file=sys.stdout, width=140).print(table(outcome))
    print(f"wall {outcome.wall_s} s; {'no violation' if outcome.ok else 'VIOLATIONS'}")
    if args.json:
        args.json.write_text(json.dumps(as_json(outcome), indent=2, default=str) + "\n")
    return 0 if outcome.ok else 1
