"""A direct phase: the worker's SQL from plain processes, no broker (the machine's yardstick).

The parent starts P children (`python -m bench.pipeline --direct-child SPEC`, see
direct_child.py) and talks to each over its stdin / stdout: the child says "ready" once its
events are decoded and its connections open, the parent says "go" to all of them at once and
the clock runs until the last has reported `{"applied": N}`; "exit" lets them go.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from bench.pipeline.console import log_tail, say
from bench.pipeline.context import Context
from bench.pipeline.cpu import cpu_breakdown, cpu_snapshot
from bench.pipeline.phases import Phase
from bench.pipeline.processes import stop
from bench.pipeline.results import Result
from bench.pipeline.verify import verify
from bench.pipeline.worker_phase import PHASE_TIMEOUT_S


async def _send(child: asyncio.subprocess.Process, word: bytes) -> None:
    assert child.stdin is not None
    child.stdin.write(word)
    await child.stdin.drain()


async def _expect(child: asyncio.subprocess.Process, prefix: str, log: Path) -> str:
    assert child.stdout is not None
    line = (await asyncio.wait_for(child.stdout.readline(), PHASE_TIMEOUT_S)).decode()
    if not line.startswith(prefix):
        tail = log_tail(log)
        raise RuntimeError(f"direct child said {line!r}, expected {prefix!r}:\n{tail}")
    return line


async def run_direct_phase(ctx: Context, phase: Phase) -> Result:
    args = ctx.args
    await ctx.db.create_accounts(phase)
    await ctx.db.checkpoint()
    xacts0 = await ctx.db.xacts()
    env = ctx.child_env(f"{ctx.ns}:{phase.name}")
    children: list[asyncio.subprocess.Process] = []
    log = ctx.logdir / f"{phase.name}.log"
    for index in range(args.processes):
        spec = {
            "run": ctx.run, "phase": phase.name, "events": phase.events,
            "batch": phase.batch, "accounts": phase.accounts, "index": index,
            "of": args.processes, "tasks": args.connections,
            "occurred_at": ctx.occurred_at,
        }  # fmt: skip
        argv = [sys.executable, "-m", "bench.pipeline", "--direct-child", json.dumps(spec)]
        children.append(await ctx.processes.spawn(argv, env, log, pipes=True))
    say(
        f"{phase.name}: {phase.events} events, {args.processes} processes x "
        f"{args.connections} connections"
    )
    try:
        for child in children:
            await _expect(child, "ready", log)
        cpu0 = cpu_snapshot()
        start = time.perf_counter()
        for child in children:
            await _send(child, b"go\n")
        applied = 0
        for child in children:
            applied += int(json.loads(await _expect(child, "{", log))["applied"])
        end = time.perf_counter()
        backends = await ctx.db.backends()
        cpu1 = cpu_snapshot()
        for child in children:
            await _send(child, b"exit\n")
    finally:
        for child in children:
            await stop(child, timeout_s=10)
    xacts1 = await ctx.db.xacts()
    seconds = end - start
    cpu = cpu_breakdown(cpu0, cpu1, workers={c.pid for c in children}, main=None, backends=backends)
    result = Result(
        phase=phase.name, kind=phase.kind, what=phase.what, events=phase.events,
        messages=0, seconds=round(seconds, 3), rate=round(phase.events / seconds, 1),
        method=f"{args.processes} processes x {args.connections} asyncpg "
               "connections, 'go' -> last 'done'",
        cpu_cores=cpu,
    )  # fmt: skip
    result.notes = {
        "applied_reported": applied,
        "pg_xact_commit": xacts1.commit - xacts0.commit,
        "pg_xact_rollback": xacts1.rollback - xacts0.rollback,
        "pg_sessions": xacts1.sessions - xacts0.sessions,
        "log": str(log),
    }
    correct, result.checks, result.txns = await verify(ctx.db.url, ctx.run, phase, ctx.occurred_at)
    result.correct = correct and applied == phase.events
    return result
