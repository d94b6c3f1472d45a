"""One run: set up the database, run the phases in order, clean up whatever happened."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence

from bench.pipeline.console import say
from bench.pipeline.context import Context
from bench.pipeline.direct_phase import run_direct_phase
from bench.pipeline.phases import Phase
from bench.pipeline.results import Result, judge
from bench.pipeline.worker_phase import run_worker_phase


async def setup(ctx: Context) -> None:
    # This process gets the workers' environment too: `Settings()` (the migration here) then
    # reads the bench database's URL, like every child.
    os.environ.update(ctx.child_env(ctx.ns))
    await ctx.db.create(ctx.args.setup_sql)


async def cleanup(ctx: Context) -> None:
    """Also after a failure or Ctrl-C: nothing of the run may outlive it, unless --keep."""
    await ctx.processes.kill_all()
    with contextlib.suppress(Exception):
        keys = [k async for k in ctx.redis.scan_iter(match=f"{ctx.ns}*", count=1000)]
        for i in range(0, len(keys), 500):
            await ctx.redis.delete(*keys[i : i + 500])
    with contextlib.suppress(Exception):
        await ctx.redis.aclose()
    if ctx.db.created and not ctx.args.keep:
        await ctx.db.drop()
    await ctx.db.close()
    if not ctx.args.keep:
        shutil.rmtree(ctx.logdir, ignore_errors=True)
    else:
        say(f"kept database {ctx.db.name}, namespace {ctx.ns}*, logs in {ctx.logdir}")


async def execute(ctx: Context, phases: Sequence[Phase]) -> list[Result]:
    results: list[Result] = []
    noop_rate: float | None = None  # `single` is judged against noop-async of the same run
    for phase in phases:
        if phase.kind == "worker":
            result = await run_worker_phase(ctx, phase)
        else:
            result = await run_direct_phase(ctx, phase)
        if phase.name == "noop-async":
            noop_rate = result.rate
        judge(result, phase, noop_rate)
        say(
            f"{phase.name}: {result.rate:,.0f} events/s over {result.seconds:.2f}s, "
            f"exactly-once {'OK' if result.correct else 'FAIL'}"
        )
        results.append(result)
    return results
