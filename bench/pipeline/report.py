"""The output of a run: the text report (facts, results table, CPU table) and the JSON."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TextIO

from bench.pipeline.results import BATCH_RATE_TARGET, SINGLE_RATIO_TARGET, Result

NOISE_CORES = 0.15  # "other" CPU above this in a phase: someone else was using the machine
CPU_COLUMNS = ("workers", "dramatiq_main", "pg_backends", "pg_other", "redis", "bench", "other",
               "idle")  # fmt: skip
PER_EVENT = ("python", "postgres", "redis", "total")


def _exactly_once(r: Result) -> str:
    # No-op phases write nothing: "correct" then only means every message was acknowledged.
    if r.kind == "direct" or r.checks.get("usage_ledger_rows") is not None:
        return {True: "OK", False: "FAIL", None: "-"}[r.correct]
    return "all acked" if r.correct else "FAIL"


def fmt_table(results: Sequence[Result]) -> str:
    head = ("phase", "events", "seconds", "events/s", "vs noop", "ev/txn", "target", "result",
            "exactly-once")  # fmt: skip
    rows: list[Sequence[str]] = [head]
    for r in results:
        per_txn = r.txns.get("events_per_txn_mean")
        rows.append((
            r.phase, f"{r.events:,}", f"{r.seconds:.2f}", f"{r.rate:,.0f}",
            f"{r.ratio_to_noop:.0%}" if r.ratio_to_noop is not None else "-",
            f"{per_txn:g}" if per_txn is not None else "-",
            r.target or "-",
            "-" if r.passed is None else ("PASS" if r.passed else "FAIL"),
            _exactly_once(r),
        ))  # fmt: skip
    return _grid(rows, right={1, 2, 3, 4, 5})


def fmt_cpu(results: Sequence[Result]) -> str:
    rows: list[Sequence[str]] = [
        ("phase", *CPU_COLUMNS, "pg xacts", "rollbacks", "sessions",
         *(f"{k} us/ev" for k in PER_EVENT))
    ]  # fmt: skip
    for r in results:
        us = r.cpu_us_per_event
        rows.append((r.phase, *(f"{r.cpu_cores.get(c, 0.0):.2f}" for c in CPU_COLUMNS),
                     f"{r.notes.get('pg_xact_commit', 0):,}",
                     f"{r.notes.get('pg_xact_rollback', 0):,}",
                     f"{r.notes.get('pg_sessions', 0):,}",
                     *(f"{us[k]:.0f}" for k in PER_EVENT)))  # fmt: skip
    return _grid(rows, right=set(range(1, len(rows[0]))))


def _grid(rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Aligned columns, a rule under the header; `right`: the indexes of numeric columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(
    out: TextIO, facts: dict[str, Any], args: argparse.Namespace, results: Sequence[Result]
) -> None:
    pg = facts["postgresql"]
    print(f"Contacto Billing pipeline benchmark, {facts['date']}", file=out)
    print(f"code: {facts['code']}", file=out)
    print(
        f"machine: nproc={facts['nproc']} ({facts['cpus_usable']} usable), "
        f"{facts['cpu_model']}, {facts['mem_gb']} GB, Linux {facts['kernel']}",
        file=out,
    )
    print(
        f"software: Python {facts['python']}, PostgreSQL {pg['server_version']} "
        f"(synchronous_commit={pg['synchronous_commit']}, fsync={pg['fsync']}, "
        f"autovacuum={pg['autovacuum']}), "
        f"Redis {facts['redis']}, " + ", ".join(f"{k} {v}" for k, v in facts["packages"].items()),
        file=out,
    )
    print(
        f"workers: {args.processes} processes x {args.threads} threads (workers.balance), "
        f"x {args.baseline_threads} threads (no-op and plain-1tx references); "
        f"direct: {args.processes} processes x {args.connections} asyncpg connections",
        file=out,
    )
    print(
        "timing (worker phases): queue filled first; clock from the moment every worker "
        "process has fetched\n  (all broker ids in the heartbeat set) to the moment no "
        "message is unacknowledged; events counted\n  = those unacknowledged at the start, "
        "so process start-up is excluded. Direct phases: 'go' to last 'done'.",
        file=out,
    )
    print(file=out)
    print(fmt_table(results), file=out)
    print(file=out)
    print(
        f"cores busy during the measured window (of {facts['cpus_usable']}); transactions and "
        "sessions in the bench database;\nCPU microseconds per event (python = worker "
        "processes + dramatiq main, postgres = backends + other postgres processes):",
        file=out,
    )
    print(fmt_cpu(results), file=out)
    _warnings(out, facts, args, results)


def _warnings(
    out: TextIO, facts: dict[str, Any], args: argparse.Namespace, results: Sequence[Result]
) -> None:
    """What makes this run's numbers not comparable with a plain run's."""
    noisy = [(r.phase, r.cpu_cores.get("other", 0.0)) for r in results]
    noisy = [(name, cores) for name, cores in noisy if cores > NOISE_CORES]
    if noisy:
        worst = max(noisy, key=lambda x: x[1])
        print(
            f"\nWARNING: processes outside the benchmark used CPU during {len(noisy)} phase(s) "
            f"(up to {worst[1]:.2f} cores in {worst[0]}): those numbers are perturbed; "
            f"rerun on a quiet machine (load average at start: {facts['loadavg']}).",
            file=out,
        )
    if args.setup_sql:
        print(f"\nEXPERIMENT: schema changed after migrating: {args.setup_sql}", file=out)
    if args.worker_env:
        print(f"\nworker environment: {' '.join(args.worker_env)}", file=out)
    if args.profile:
        print(
            f"\nNOTE: py-spy was attached (--profile {args.profile}); rates are perturbed.",
            file=out,
        )


def to_json(
    facts: dict[str, Any], args: argparse.Namespace, results: Sequence[Result]
) -> dict[str, Any]:
    return {
        "machine": facts,
        # direct_child is the children's internal option: always None here.
        "config": {k: v for k, v in vars(args).items() if k != "direct_child"},
        "targets": {
            "single_ratio_to_noop_async": SINGLE_RATIO_TARGET,
            "batch100_events_per_s": BATCH_RATE_TARGET,
        },
        "phases": [dict(vars(r), cpu_us_per_event=r.cpu_us_per_event) for r in results],
        "all_correct": all(r.correct for r in results),
        "all_targets_pass": all(r.passed for r in results if r.passed is not None),
    }
