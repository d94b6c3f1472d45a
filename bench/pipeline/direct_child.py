"""The child side of a direct phase: the worker's own functions (`common.usage.debits`), on
connections held for the whole phase, driven by the parent over stdin / stdout (see
direct_phase.py)."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta
from typing import Any

from bench.pipeline.events import make_event
from bench.pipeline.phases import Phase
from common.broker.publish import chunked
from common.names import ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH


async def direct_child(spec: dict[str, Any]) -> None:
    # Imported here: only a child needs SQLAlchemy and the engine; the parent imports this
    # module too (through cli) and would load them for nothing.
    from common.db.engine import create_engine, raw_connection
    from common.db.errors import retry_conflicts
    from common.recharge.config import PolicyConfig
    from common.usage.debits import DebitResult, apply_usage
    from common.usage.decode import Incoming, decode_batch, decode_single
    from config.settings import Settings

    settings = Settings()
    policy = PolicyConfig(
        retry_min_interval=timedelta(seconds=settings.retry_min_interval_s),
        run_max_charges=settings.run_max_charges,
    )
    phase = Phase(
        spec["phase"], "direct", "", spec["events"], batch=spec["batch"], accounts=spec["accounts"]
    )
    # Every child builds all the events and keeps every `of`-th unit (message or batch) from
    # its `index` on: the same events as the parent's, without sending them over a pipe.
    events = [make_event(spec["run"], phase, i, spec["occurred_at"]) for i in range(phase.events)]
    units: list[list[Incoming]] = []
    for k, chunk in enumerate(chunked(events, phase.batch)):
        if k % spec["of"] != spec["index"]:
            continue
        mid = f"direct-{spec['phase']}-{k}"
        if phase.batch == 1:
            actor = ACTOR_RECORD_USAGE
            decoded = decode_single((), chunk[0], message_id=mid, actor_name=actor)
        else:
            actor = ACTOR_RECORD_USAGE_BATCH
            decoded = decode_batch((), {"events": chunk}, message_id=mid, actor_name=actor)
        assert not decoded.rejections, decoded.rejections
        units.append(decoded.items)

    tasks_n: int = spec["tasks"]
    engine = create_engine(settings, pool_size=tasks_n)
    go, all_ready, all_done, leave = (asyncio.Event() for _ in range(4))
    ready = finished = applied = 0

    async def run(mine: list[list[Incoming]]) -> None:
        nonlocal ready, finished, applied
        async with raw_connection(engine) as conn:  # held for the whole phase
            ready += 1
            if ready == tasks_n:
                all_ready.set()
            await go.wait()
            for items in mine:

                async def attempt(items: list[Incoming] = items) -> DebitResult:
                    return await apply_usage(conn, items, [], policy)

                result = await retry_conflicts(attempt)
                if result.rejections:
                    raise RuntimeError(f"rejected: {result.rejections[0].reason}")
                applied += len(result.applied)
            finished += 1
            if finished == tasks_n:
                all_done.set()
            # Connections stay open until "exit": the parent lists the phase's backends after
            # the clock stops, to count their CPU as the pipeline's.
            await leave.wait()

    async def until(event: asyncio.Event) -> None:
        """Wait for `event`, but fail at once if a task died (it would never be set)."""
        waiter = asyncio.create_task(event.wait())
        await asyncio.wait([waiter, *workers], return_when=asyncio.FIRST_COMPLETED)
        for w in workers:
            if w.done():
                w.result()  # raises what the task raised
        if not event.is_set():
            raise RuntimeError("a task ended early")

    loop = asyncio.get_running_loop()
    workers = [asyncio.create_task(run(units[t::tasks_n])) for t in range(tasks_n)]
    await until(all_ready)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "go"
    go.set()
    await until(all_done)
    print(json.dumps({"applied": applied}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "exit"
    leave.set()
    await asyncio.gather(*workers)
    await engine.dispose()
