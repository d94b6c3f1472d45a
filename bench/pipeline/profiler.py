"""`--profile DIR`: py-spy attached to a worker phase's processes, raw folded stacks per phase
(bench/pyspy_summary.py buckets them)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

from bench.pipeline.context import Context
from bench.pipeline.phases import Phase


async def start_profiler(ctx: Context, phase: Phase, pid: int) -> asyncio.subprocess.Process | None:
    """py-spy on dramatiq's main process `pid` and its worker processes; None without
    --profile."""
    if not ctx.args.profile:
        return None
    # The venv's py-spy when it is not on PATH (`pip install py-spy` into the venv).
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = Path(ctx.args.profile) / f"{phase.name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    # --nonblocking: stopping the workers for every sample would slow them down even more.
    argv = [pyspy, "record", "--pid", str(pid), "--subprocesses", "--rate", "200",
            "--format", "raw", "--output", str(out), "--nonblocking"]  # fmt: skip
    if ctx.args.profile_gil:
        argv.append("--gil")
    log = ctx.logdir / f"{phase.name}.py-spy.log"
    return await ctx.processes.spawn(argv, dict(os.environ), log)


async def stop_profiler(proc: asyncio.subprocess.Process) -> None:
    try:
        await asyncio.wait_for(proc.wait(), 30)  # it ends with its target
    except TimeoutError:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        await proc.wait()
