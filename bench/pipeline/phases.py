"""The phases of a run: what each one sends, to which worker, and which target it is held to."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from common.names import ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH

# The no-op actors of bench/_noop_worker.py (not imported here: importing it builds a broker).
NOOP_ASYNC = "bench_noop_async"
NOOP_SYNC = "bench_noop_sync"

# Phases --quick leaves out: the references and the hot-account case, which a smoke test of the
# pipeline does not need.
QUICK_SKIPS = frozenset({"noop-sync", "noop-grouped", "plain-1tx", "single-hot"})


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    kind: str  # "worker": dramatiq processes; "direct": asyncpg from plain processes
    what: str
    events: int
    batch: int = 1  # events per message (worker) or per transaction (direct)
    module: str = ""  # dramatiq module (worker phases)
    actor: str = ""  # actor name on the messages (worker phases)
    accounts: int = 0  # 0: no database work (no-op phases)
    target: str = ""  # "ratio" (>= 70 % of noop-async) or "rate" (>= 25,000 events/s)
    env: tuple[tuple[str, str], ...] = ()  # extra worker environment for this phase
    baseline: bool = False  # a reference phase: runs with --baseline-threads (dramatiq's 8)

    @property
    def messages(self) -> int:
        return -(-self.events // self.batch)


def plan(args: argparse.Namespace) -> list[Phase]:
    """The phases to run, in order: noop-async first, as `single` is judged against its rate."""
    n, nb, acc = args.events, args.batch_events, args.accounts
    balance = "workers.balance"
    noop_n = args.noop_events or n
    phases = [
        Phase("noop-async", "worker", "async no-op actor, stock RedisBroker, same middleware "
              "and queue", noop_n, module="bench._noop_worker", actor=NOOP_ASYNC, baseline=True),
        Phase("noop-sync", "worker", "sync no-op actor, stock RedisBroker, same middleware "
              "and queue", noop_n, module="bench._noop_worker", actor=NOOP_SYNC, baseline=True),
        Phase("noop-grouped", "worker", "async no-op actor on our broker (grouped acks)",
              noop_n, module="bench._noop_worker", actor=NOOP_ASYNC, baseline=True,
              env=(("CONTACTO_BENCH_NOOP_BROKER", "grouped"),)),
        Phase("plain-1tx", "worker", "record_usage, one transaction per message (no group "
              "commit), stock RedisBroker", max(1, n // 2), module="bench._plain_worker",
              actor=ACTOR_RECORD_USAGE, accounts=acc, baseline=True),
        Phase("single", "worker", f"record_usage via workers.balance, {acc} accounts", n,
              module=balance, actor=ACTOR_RECORD_USAGE, accounts=acc, target="ratio"),
        Phase("single-hot", "worker", "record_usage via workers.balance, ONE account",
              max(1, n // 2), module=balance, actor=ACTOR_RECORD_USAGE, accounts=1),
        Phase("batch100", "worker", f"record_usage_batch of 100 via workers.balance, {acc} "
              "accounts", nb, batch=100, module=balance,
              actor=ACTOR_RECORD_USAGE_BATCH, accounts=acc, target="rate"),
        Phase("direct-single", "direct", "apply_usage per event, asyncpg, no broker", n,
              accounts=acc),
        Phase("direct-batch100", "direct", "apply_usage per 100 events, asyncpg, no broker", nb,
              batch=100, accounts=acc),
    ]  # fmt: skip
    if args.phases:
        wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
        unknown = set(wanted) - {p.name for p in phases}
        if unknown:
            raise SystemExit(f"unknown phase(s): {', '.join(sorted(unknown))}")
        return [p for p in phases if p.name in wanted]
    if args.quick:
        return [p for p in phases if p.name not in QUICK_SKIPS]
    return phases
