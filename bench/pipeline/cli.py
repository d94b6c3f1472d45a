"""The command line: `python -m bench.pipeline [options]` (options: bench/README.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import bench.pipeline
from bench.pipeline.console import say
from bench.pipeline.context import Context
from bench.pipeline.direct_child import direct_child
from bench.pipeline.facts import machine_facts
from bench.pipeline.phases import plan
from bench.pipeline.report import report, to_json
from bench.pipeline.runner import cleanup, execute, setup
from common import procfile

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
_DOC = bench.pipeline.__doc__


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.pipeline", description=_DOC.split("\n\n")[0] if _DOC else None
    )
    p.add_argument(
        "--events", type=int, default=20_000, help="single-event messages per phase (default 20000)"
    )
    p.add_argument(
        "--batch-events",
        type=int,
        default=200_000,
        help="events sent in batches of 100 (default 200000)",
    )
    p.add_argument(
        "--noop-events",
        type=int,
        default=0,
        help="messages for the no-op phases (default: --events)",
    )
    p.add_argument("--accounts", type=int, default=1000)
    # The balance worker as deployed: its Procfile line's processes and threads (2 x 64); the
    # references as dramatiq runs out of the box (8 threads, its default).
    deployed = procfile.read()["balance"]
    p.add_argument(
        "--processes",
        type=int,
        default=int(deployed.option("--processes", "-p") or 1),
        help="processes of every phase (default: the Procfile's balance worker's, %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=int(deployed.option("--threads", "-t") or 8),
        help="threads of workers.balance phases (default: the Procfile's, %(default)s)",
    )
    p.add_argument(
        "--baseline-threads",
        type=int,
        default=8,
        help="threads of the no-op and plain-1tx reference phases (dramatiq's default)",
    )
    p.add_argument(
        "--connections", type=int, default=8, help="asyncpg connections per direct process"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 3,000 / 30,000 events; no noop-sync, plain-1tx, single-hot",
    )
    p.add_argument("--phases", help="comma-separated subset of phases, in the default order")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write JSON to PATH, or to stdout (table then goes to stderr)",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="attach py-spy to worker phases, raw folded stacks into DIR",
    )
    p.add_argument("--profile-gil", action="store_true", help="py-spy --gil")
    p.add_argument(
        "--setup-sql",
        help="EXPERIMENT: SQL run once on the bench database after migrating (e.g. drop a "
        "constraint to see what it costs)",
    )
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the workers (repeatable), e.g. CONTACTO_USAGE_MAX_IN_FLIGHT=2",
    )
    p.add_argument("--label", help="what code is under test (default: from git)")
    p.add_argument("--keep", action="store_true", help="keep the database, keys and logs")
    p.add_argument(
        "--pg-url",
        default=os.environ.get("CONTACTO_BENCH_PG", DEFAULT_PG),
        help="server URL without database name",
    )
    p.add_argument("--redis-url", default=os.environ.get("CONTACTO_BENCH_REDIS", DEFAULT_REDIS))
    # Internal: how a direct phase starts its children (direct_child.py).
    p.add_argument("--direct-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.events = min(args.events, 3_000)
        args.batch_events = min(args.batch_events, 30_000)
    return args


async def main_async(args: argparse.Namespace) -> int:
    ctx = Context.create(args)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    # Cancelling the task runs cleanup (the `finally` below), so a run stopped by Ctrl-C or
    # SIGTERM leaves no database, keys or workers behind.
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        loop.add_signal_handler(sig, task.cancel)
    try:
        await setup(ctx)
        assert ctx.db.admin is not None
        facts = await machine_facts(ctx.db.admin, ctx.redis, args.label)
        results = await execute(ctx, plan(args))
    finally:
        await cleanup(ctx)
    table_out = sys.stderr if args.json == "-" else sys.stdout
    report(table_out, facts, args, results)
    if args.json:
        data = json.dumps(to_json(facts, args, results), indent=2, default=str)
        if args.json == "-":
            print(data)
        else:
            await asyncio.to_thread(Path(args.json).write_text, data + "\n")
    if not all(r.correct for r in results):
        print("\nEXACTLY-ONCE CHECK FAILED", file=table_out)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.direct_child:
        asyncio.run(direct_child(json.loads(args.direct_child)))
        return 0
    try:
        return asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; cleaned up")
        return 130
