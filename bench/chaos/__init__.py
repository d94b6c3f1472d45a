"""The chaos run (issue 12): the real pipeline under load while everything goes wrong.

    .venv/bin/python -m bench.chaos [--events N] [--accounts N] [--seed S] [--small] [--json PATH]

The run starts its own PostgreSQL and Redis (so it may restart and flush them), migrates with
`contacto-billing db upgrade`, creates accounts with cards and auto-recharge, and starts the
Procfile's balance, charge, retry and relay lines as separate process groups. While it plays
usage events (single and batched, 5 % duplicates) through the simulated gateway (declines,
timeouts, lost responses), it SIGKILLs worker processes, SIGTERMs each group once, restarts
PostgreSQL and Redis and flushes Redis. Then it waits, bounded, for the pipeline to settle, and
checks: every event debited once, balances equal to their ledger, every gateway charge credited
once, every suspension the policy's, dead letters explained. See docs/chaos.md.

Modules: `cli` (options, table, exit status) -> `run` (one run) on `servers` (its PostgreSQL
and Redis), `stack` (the Procfile's processes, killed and restarted), `load` (events, gateway
faults) and `checks` (the verdicts).
"""
