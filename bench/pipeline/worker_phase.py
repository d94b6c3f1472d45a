"""A worker phase: fill the queue, start `python -m dramatiq`, time it until all is acked."""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq

from bench.pipeline.console import log_tail, say
from bench.pipeline.context import Context
from bench.pipeline.cpu import CpuSnapshot, cpu_breakdown, cpu_snapshot
from bench.pipeline.events import make_event
from bench.pipeline.phases import Phase
from bench.pipeline.processes import stop
from bench.pipeline.profiler import start_profiler, stop_profiler
from bench.pipeline.results import Result
from bench.pipeline.verify import verify
from common.broker.publish import chunked, usage_batch_message, usage_message
from common.names import ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH, QUEUE_USAGE

PHASE_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class Window:
    """The measured window of a worker phase (perf_counter seconds)."""

    first: float  # the first worker process fetched
    start: float  # every worker process had fetched: the clock starts
    end: float  # nothing left unacknowledged
    remaining: int  # messages still unacknowledged at `start`: the ones counted
    cpu: dict[str, float]  # cores per component during [start, end]


async def prefill(ctx: Context, namespace: str, messages: Sequence[dramatiq.Message[Any]]) -> None:
    """What RedisBroker.enqueue does (dispatch.lua "enqueue"), pipelined, without touching
    the heartbeat set (which the clock watches)."""
    msgs_key, queue_key = f"{namespace}:{QUEUE_USAGE}.msgs", f"{namespace}:{QUEUE_USAGE}"
    pipe = ctx.redis.pipeline(transaction=False)
    for n, message in enumerate(messages, 1):
        rid = secrets.token_hex(16)
        pipe.hset(msgs_key, rid, message.copy(options={"redis_message_id": rid}).encode())
        pipe.rpush(queue_key, rid)
        if n % 1000 == 0:
            await pipe.execute()
    await pipe.execute()


async def watch(
    ctx: Context, namespace: str, proc: asyncio.subprocess.Process, total: int, log: Path
) -> Window:
    heartbeats = f"{namespace}:__heartbeats__"
    msgs, delayed = f"{namespace}:{QUEUE_USAGE}.msgs", f"{namespace}:{QUEUE_USAGE}.DQ.msgs"
    first: float | None = None
    start: float | None = None
    remaining = 0
    cpu0: CpuSnapshot | None = None
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while True:
        pipe = ctx.redis.pipeline(transaction=True)  # one atomic reading
        pipe.zcard(heartbeats)
        pipe.hlen(msgs)
        pipe.hlen(delayed)
        consumers, left, later = await pipe.execute()
        now = time.perf_counter()
        if first is None and consumers:
            first = now
        if start is None and consumers >= ctx.args.processes:
            start, remaining = now, left + later
            cpu0 = cpu_snapshot()
        if start is not None and left == 0 and later == 0:
            end = time.perf_counter()
            backends = await ctx.db.backends()
            cpu1 = cpu_snapshot()
            break
        if proc.returncode is not None:
            tail = log_tail(log)
            raise RuntimeError(f"workers exited ({proc.returncode}):\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"phase timed out with {left + later} of {total} unacked")
        # Polled faster before the start: the start-up skew is reported to the millisecond.
        await asyncio.sleep(0.005 if start is None else 0.01)
    assert first is not None and start is not None and cpu0 is not None
    workers = {pid for pid, p in cpu1.procs.items() if p.ppid == proc.pid}
    cpu = cpu_breakdown(cpu0, cpu1, workers=workers, main=proc.pid, backends=backends)
    return Window(first=first, start=start, end=end, remaining=remaining, cpu=cpu)


def build_messages(ctx: Context, phase: Phase) -> list[dramatiq.Message[Any]]:
    """The producer's own message builders, so the payloads are exactly what workers get."""
    events = [make_event(ctx.run, phase, i, ctx.occurred_at) for i in range(phase.events)]
    if phase.batch == 1:
        messages = [usage_message(ev) for ev in events]
    else:
        messages = [usage_batch_message(chunk) for chunk in chunked(events, phase.batch)]
    if phase.actor not in (ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH):
        # the no-op phases: the same payload, only the actor differs
        messages = [m.copy(actor_name=phase.actor) for m in messages]
    return messages


async def run_worker_phase(ctx: Context, phase: Phase) -> Result:
    namespace = f"{ctx.ns}:{phase.name}"
    messages = build_messages(ctx, phase)
    if phase.accounts:
        await ctx.db.create_accounts(phase)
    await prefill(ctx, namespace, messages)
    args = ctx.args
    threads = args.baseline_threads if phase.baseline else args.threads
    say(
        f"{phase.name}: {len(messages)} messages queued; starting "
        f"{args.processes} x {threads} {phase.module}"
    )
    await ctx.db.checkpoint()
    xacts0 = await ctx.db.xacts()

    log = ctx.logdir / f"{phase.name}.log"
    argv = [sys.executable, "-m", "dramatiq", phase.module, "--processes", str(args.processes),
            "--threads", str(threads), "--queues", QUEUE_USAGE]  # fmt: skip
    env = ctx.child_env(namespace) | dict(phase.env)
    proc = await ctx.processes.spawn(argv, env, log)
    profiler = await start_profiler(ctx, phase, proc.pid)
    try:
        window = await watch(ctx, namespace, proc, len(messages), log)
    finally:
        stop_s = await stop(proc)
        if profiler is not None:
            await stop_profiler(profiler)
    xacts1 = await ctx.db.xacts()
    dead = await ctx.redis.hlen(f"{namespace}:{QUEUE_USAGE}.XQ.msgs")

    counted = window.remaining * phase.batch
    seconds = window.end - window.start
    result = Result(
        phase=phase.name, kind=phase.kind, what=phase.what, events=counted,
        messages=window.remaining, seconds=round(seconds, 3),
        rate=round(counted / seconds, 1),
        method="all consumers fetching -> no unacked message (startup excluded)",
        cpu_cores=window.cpu,
    )  # fmt: skip
    result.notes = {
        "messages_total": len(messages),
        "processed_before_clock": len(messages) - window.remaining,
        "consumer_start_skew_s": round(window.start - window.first, 3),
        "stop_s": round(stop_s, 2),
        "dead_lettered": dead,
        "pg_xact_commit": xacts1.commit - xacts0.commit,
        "pg_xact_rollback": xacts1.rollback - xacts0.rollback,
        "pg_sessions": xacts1.sessions - xacts0.sessions,
        "log": str(log),
    }
    if phase.accounts:
        correct, result.checks, result.txns = await verify(
            ctx.db.url, ctx.run, phase, ctx.occurred_at
        )
        result.correct = correct and dead == 0
    else:
        result.correct = dead == 0
        result.checks = {"dead_lettered": dead, "all_acked": True}
    return result
