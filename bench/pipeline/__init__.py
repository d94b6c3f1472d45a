"""End-to-end throughput of the usage pipeline: Redis broker, worker processes, PostgreSQL.

    .venv/bin/python -m bench.pipeline [--events N] [--processes 2] [--threads 64] [--quick]

Every phase is measured the same way. The queue is filled first, then the worker processes are
started; the clock starts when every worker process has fetched from the queue (its broker id
appears in the namespace's heartbeat set) and stops when no message of the phase is left
unacknowledged (`<ns>:usage.msgs` and `<ns>:usage.DQ.msgs` are empty). Only the messages still
unacknowledged when the clock starts are counted, so process start-up is excluded. A message is
acknowledged only after its transaction committed, so "acknowledged" means "durable".

The database and the dramatiq namespace are the benchmark's own and are dropped at the end (also
on Ctrl-C). See bench/README.md.

Modules: `cli` (options, main) -> `runner` (setup, phases in order, cleanup) -> `worker_phase`
/ `direct_phase` (one phase each; `direct_child` is the other side of a direct phase) on a
`context.Context`. Underneath: `phases` and `events` (what is sent), `database` and `verify`
(the bench database, the exactly-once checks), `processes` and `profiler` (child processes),
`cpu` (who used the cores), `facts` (machine and code), `results` and `report` (the verdicts,
the tables and the JSON), `console` (progress lines).
"""

from pathlib import Path

# The repository root: the cwd and PYTHONPATH of every child process (`python -m dramatiq
# bench._noop_worker` and `python -m bench.pipeline --direct-child` import from it).
REPO = Path(__file__).resolve().parents[2]
