"""CPU accounting from /proc: who used the cores while the clock ran.

Rates alone cannot tell a slower pipeline from a busier machine (a VM on a shared host, other
jobs), so every phase also records the cores each component used during its window.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Proc:
    ppid: int
    comm: str
    cpu: float  # user + system seconds
    reaped: float  # children's user + system seconds, once the process waited for them


@dataclass(slots=True)
class CpuSnapshot:
    at: float
    procs: dict[int, Proc]
    busy: float  # machine-wide, seconds
    total: float


def _read_procs() -> dict[int, Proc]:
    out: dict[int, Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                raw = fh.read().decode(errors="replace")
        except OSError:
            continue  # the process exited between the listing and the read
        # comm may contain spaces and parentheses: it is whatever lies between the first "("
        # and the last ")".
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(entry.name)] = Proc(
            int(fields[1]),
            comm,
            (int(fields[11]) + int(fields[12])) / CLK_TCK,
            (int(fields[13]) + int(fields[14])) / CLK_TCK,
        )
    return out


def cpu_snapshot() -> CpuSnapshot:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return CpuSnapshot(
        time.perf_counter(), _read_procs(), (total - idle) / CLK_TCK, total / CLK_TCK
    )


def _descendants(procs: dict[int, Proc], roots: Iterable[int]) -> set[int]:
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, proc in procs.items():
            if proc.ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


def cpu_breakdown(
    start: CpuSnapshot,
    end: CpuSnapshot,
    *,
    workers: set[int],
    main: int | None,
    backends: set[int],
) -> dict[str, float]:
    """Cores used per component during [start, end] (CPU seconds / wall seconds)."""
    wall = max(end.at - start.at, 1e-9)
    me = os.getpid()
    worker_pids = _descendants(end.procs, workers) - ({main} if main else set())
    pg_pids = {pid for pid, proc in end.procs.items() if proc.comm == "postgres"}
    spent: dict[str, float] = defaultdict(float)
    for pid, proc in end.procs.items():
        before = start.procs.get(pid)
        if proc.comm == "postgres" and proc.ppid not in pg_pids:
            # the postmaster: backends that exited in the window (connection churn) end up
            # in its reaped-children time
            spent["pg_backends"] += proc.reaped - (before.reaped if before else 0.0)
        delta = proc.cpu - (before.cpu if before else 0.0)
        comm = proc.comm
        if delta <= 0:
            continue
        if pid in worker_pids:
            spent["workers"] += delta
        elif pid == main:
            spent["dramatiq_main"] += delta
        elif pid in backends:
            spent["pg_backends"] += delta
        elif comm == "postgres":
            spent["pg_other"] += delta
        elif comm.startswith("redis-server"):
            spent["redis"] += delta
        elif pid == me:
            spent["bench"] += delta
    busy = end.busy - start.busy
    capacity = end.total - start.total
    cores = {k: round(v / wall, 3) for k, v in spent.items()}
    # "other": busy time no process above accounts for, i.e. someone else on the machine.
    cores["other"] = round(max(busy - sum(spent.values()), 0.0) / wall, 3)
    cores["idle"] = round(max(capacity - busy, 0.0) / wall, 3)
    return cores
