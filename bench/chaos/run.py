"""One chaos run: servers, database, accounts, the pipeline; the load and the faults at once;
settle; stop; check. `Run.execute()` returns the results; `cli` prints and exits."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import redis
import redis.asyncio as aioredis

from bench.chaos import checks
from bench.chaos.load import FaultFeeder, Plan, Publisher, make_plan
from bench.chaos.servers import Postgres, Redis, free_port
from bench.chaos.stack import KINDS, Stack
from bench.pipeline import REPO
from bench.pipeline.console import say
from bench.pipeline.processes import child_env
from common.accounts.support import create_account, credit_account
from common.broker.factory import build_broker
from common.broker.inspect import queue_stats
from common.gateway.simulated import SimulatedGateway, delete_state
from common.names import QUEUE_CHARGES, QUEUE_RETRIES
from common.recharge.settings import attach_card, set_auto_recharge
from config.settings import Settings

NAMESPACE = "contacto-chaos"  # the run's own Redis: no other namespace lives there
OPENING = Decimal("60")
THRESHOLD = Decimal("50")  # T
RECHARGE = Decimal("25")  # R: the default minimum recharge
# A few accounts whose card always declines: they walk the whole ladder to suspension, so the
# suspension check has suspensions to judge, not only the rare five failures in a row.
DECLINING_SHARE = 0.03
DECLINING_CARD = "pm_card_chargeDeclined"


@dataclass
class Action:
    at_s: float  # seconds after the load started
    what: str  # kill, term, pg_restart, redis_restart, flush
    kind: str = ""


@dataclass
class Outcome:
    """Everything the table and the JSON show."""

    run: str
    options: dict[str, Any]
    injected: dict[str, Any] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)
    checks: list[checks.Check] = field(default_factory=list)
    settled_s: float | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def schedule(rng: random.Random, duration_s: float, kills: int) -> list[Action]:
    """Every action in its own slot between 5 % and 90 % of the load, in a random order; the
    kills go round the kinds (each round in a random order), so each kind gets its share."""
    victims: list[str] = []
    while len(victims) < kills:
        round_ = list(KINDS)
        rng.shuffle(round_)
        victims += round_
    victims = victims[:kills]
    actions = [Action(0, "kill", k) for k in victims]
    actions += [Action(0, "term", k) for k in KINDS]
    actions += [Action(0, "pg_restart"), Action(0, "redis_restart"), Action(0, "flush")]
    rng.shuffle(actions)
    slot = duration_s * 0.85 / len(actions)
    for n, action in enumerate(actions):
        action.at_s = round(duration_s * 0.05 + slot * (n + rng.random() * 0.5), 1)
    return actions


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.run = secrets.token_hex(4)
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"contacto-chaos-{self.run}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logdir = self.workdir / "logs"
        self.logdir.mkdir(exist_ok=True)
        self.pg = Postgres(self.workdir)
        self.redis = Redis(self.workdir)
        self.sim_prefix = f"contacto-chaos-{self.run}:simgw"
        self.outcome = Outcome(self.run, dict(vars(args)))
        self.started = time.monotonic()
        self.stack: Stack | None = None

    # --- the timeline ------------------------------------------------------------------------

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:7.1f}s {text}"
        self.outcome.timeline.append(line)
        say(text)

    def env(self) -> dict[str, str]:
        env = child_env(
            db_url=f"{self.pg.url}/contacto",
            redis_url=self.redis.url,
            namespace=NAMESPACE,
            worker_env=[],
        )
        env.update(
            CONTACTO_SIMULATED_PREFIX=self.sim_prefix,
            # The gateway is not ours: its state must outlive the FLUSHALL of our Redis.
            CONTACTO_SIMULATED_REDIS_URL=self.args.gateway_redis,
            CONTACTO_PYTHON=sys.executable,
            CONTACTO_PROM_DIR=str(self.workdir / "prom"),
            RETRY_MIN_INTERVAL_SECONDS="2",  # the ladder walks in seconds, not half-hours
            # Recovery knobs: a dead worker's messages back in 10 s; the reconciler (issue 12,
            # fault 3), once merged, re-publishes internal work lost to the flush after 10 s.
            # Unknown settings are ignored by code that predates them.
            CONTACTO_BROKER_HEARTBEAT_TIMEOUT_MS="10000",
            CONTACTO_BROKER_MAINTENANCE_CHANCE="200000",
            CONTACTO_RECONCILE_AFTER_S="10",
            CONTACTO_RETRIES_MIN_BACKOFF_MS="100",
            CONTACTO_RETRIES_MAX_BACKOFF_MS="2000",
        )
        for kind in KINDS:  # free ports: other stacks on this machine use the defaults
            env[f"CONTACTO_{kind.upper()}_METRICS_PORT"] = str(free_port())
        for item in self.args.set:
            key, _, value = item.partition("=")
            env[key] = value
        return env

    # --- set-up ------------------------------------------------------------------------------

    def setup(self) -> tuple[dict[str, str], list[str], frozenset[str]]:
        self.pg.start()
        self.redis.start()
        env = self.env()
        # This process is the upstream and the operator of the stack: same settings.
        os.environ.update(env)
        subprocess.run(
            [self.pg.bin / "psql", "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres",
             "-qc", "CREATE DATABASE contacto"],
            check=True, capture_output=True,
        )  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "common.cli.main", "db", "upgrade"],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"db upgrade failed:\n{done.stdout}{done.stderr}")
        accounts, declining = asyncio.run(self.create_accounts(Settings()))
        self.note(
            f"{len(accounts)} accounts with cards and auto-recharge (T {THRESHOLD}, R {RECHARGE})"
        )
        return env, accounts, declining

    async def create_accounts(self, settings: Settings) -> tuple[list[str], frozenset[str]]:
        ids = [f"chaos-{self.run}-{n:04d}" for n in range(self.args.accounts)]
        declining = frozenset(self.rng.sample(ids, max(1, int(len(ids) * DECLINING_SHARE))))
        conn = await asyncpg.connect(settings.asyncpg_dsn)
        client = aioredis.Redis.from_url(self.args.gateway_redis)
        gateway = SimulatedGateway(client, self.sim_prefix)
        try:
            for account_id in ids:
                # The support operations the CLI runs, without a process per call.
                await create_account(conn, account_id, "USD")
                await credit_account(conn, account_id, OPENING, "chaos run opening balance")
                card = DECLINING_CARD if account_id in declining else "pm_card_visa"
                await attach_card(conn, gateway, account_id, card, settings)
                await set_auto_recharge(
                    conn, account_id, settings, balance_amount=THRESHOLD, recharge_amount=RECHARGE
                )
        finally:
            await conn.close()
            await client.aclose()
        self.outcome.injected["accounts_always_declining"] = len(declining)
        return ids, declining

    # --- the chaos ---------------------------------------------------------------------------

    def act(self, stack: Stack, action: Action, publisher: Publisher) -> None:
        if action.what == "kill":
            what = stack.kill(action.kind, self.rng)
            self.note(f"SIGKILL {action.kind} ({what}); restarted")
        elif action.what == "term":
            took = stack.term(action.kind)
            self.note(f"SIGTERM to the {action.kind} group: gone in {took:.1f} s; restarted")
        elif action.what == "pg_restart":
            took = self.pg.restart()
            self.note(f"PostgreSQL restarted ({took:.1f} s down)")
        elif action.what == "redis_restart":
            took = self.redis.restart()
            self.note(f"Redis restarted ({took:.1f} s down)")
        elif action.what == "flush":
            # The flush must strand internal work (issue 12, fault 3). A live charge worker
            # fetches each run_recharge at once and keeps it in memory, where a flush cannot
            # reach it; so the flush comes while the charge worker is down (a crash during a
            # failover): its unacknowledged messages and those published meanwhile exist only
            # in Redis. Waits, a little, for there to be some.
            with stack.down("charge"):
                self.internal_messages(wait_s=20)
                with publisher.lock:  # no enqueue half before, half after
                    lost = self.internal_messages(wait_s=0)  # counted again, at the last moment
                    self.redis.flush()
                    cut = list(publisher.sent_ids)
            self.outcome.injected["internal_messages_flushed"] = lost
            self.note(
                f"charge SIGKILLed, FLUSHALL of the run's Redis ({len(cut)} events sent, {lost} "
                "run_recharge/record_failure/recheck_tier messages only Redis had), charge "
                "restarted"
            )
            # The upstream republishes what it has no receipt for; the wait lets messages a
            # worker held across the flush commit first (a duplicate would be harmless).
            time.sleep(3)
            missing = asyncio.run(self.missing(cut))
            publisher.replay(missing)
            self.note(f"upstream replayed {len(missing)} events not recorded at the flush")
        self.revive(stack)

    def internal_messages(self, wait_s: float) -> int:
        """Internal messages only Redis holds (the charge worker being down): every message of
        the charges queue, and the retries queue's ready ones (its delayed ones may be in the
        retry worker's memory). As soon as there are any, or after `wait_s`."""
        deadline = time.monotonic() + wait_s
        client = self.redis.client()
        try:
            while True:
                n = 0
                for s in queue_stats(client, NAMESPACE, 10_000):
                    if s.queue == QUEUE_CHARGES:
                        n += s.ready + s.delayed + s.in_flight
                    elif s.queue == QUEUE_RETRIES:
                        n += s.ready
                if n or time.monotonic() > deadline:
                    return n
                time.sleep(0.05)
        finally:
            client.close()

    def revive(self, stack: Stack) -> None:
        for kind in stack.revive():
            self.note(f"{kind} had died on its own: restarted")

    async def missing(self, ids: list[str]) -> list[str]:
        conn = await asyncpg.connect(Settings().asyncpg_dsn)
        try:
            rows = await conn.fetch(
                "SELECT t.id FROM unnest($1::text[]) AS t(id) "
                "WHERE NOT EXISTS (SELECT 1 FROM usage_events u WHERE u.event_id = t.id)",
                ids,
            )
        finally:
            await conn.close()
        return [r["id"] for r in rows]

    def play(self, stack: Stack, plan: Plan) -> Publisher:
        settings = Settings()
        publisher = Publisher(build_broker(settings), plan, self.args.duration)
        gateway_redis = redis.Redis.from_url(self.args.gateway_redis)
        feeder = FaultFeeder(gateway_redis, self.sim_prefix, self.rng)
        feeder.top_up()
        actions = schedule(self.rng, self.args.duration, self.args.kills)
        threads = [
            threading.Thread(target=publisher.run, name="publisher", daemon=True),
            threading.Thread(target=feeder.run, name="faults", daemon=True),
        ]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        self.note(
            f"load: {len(plan.events)} events in {len(plan.messages)} messages over "
            f"{self.args.duration:g} s; {len(actions)} faults scheduled"
        )
        # One thread per kind: a group that takes 20 s to stop must not hold back the faults
        # of the others, nor the servers' restarts (which run on this thread).
        per_kind = {k: ThreadPoolExecutor(1, thread_name_prefix=f"chaos-{k}") for k in KINDS}
        futures: list[Future[None]] = []
        try:
            for action in actions:
                while (wait := t0 + action.at_s - time.monotonic()) > 0:
                    time.sleep(min(wait, 1.0))
                    self.revive(stack)
                if action.kind:
                    futures.append(per_kind[action.kind].submit(self.act, stack, action, publisher))
                else:
                    self.act(stack, action, publisher)
            while not publisher.done.wait(1.0):
                self.revive(stack)
            for future in futures:
                future.result()
        except BaseException:
            publisher.stop.set()
            raise
        finally:
            for pool in per_kind.values():
                pool.shutdown(wait=True, cancel_futures=True)
            # Faults stop with the load: the settle phase is recovery, not more chaos.
            used = feeder.finish()
            gateway_redis.close()
        self.note(f"load done: {publisher.sent_messages} messages sent")
        self.outcome.injected.update(
            gateway_faults={k: used.get(k, 0) for k in ("decline", "timeout", "lost_response")},
            gateway_calls_faulted_or_not=sum(used.values()),
            publish_retries=publisher.publish_errors,
            events_replayed_after_flush=publisher.replayed,
        )
        return publisher

    # --- the end -----------------------------------------------------------------------------

    def pending(self, client: redis.Redis, sent: list[str]) -> dict[str, int]:
        async def from_db() -> dict[str, int]:
            conn = await asyncpg.connect(Settings().asyncpg_dsn)
            try:
                row = await conn.fetchrow(
                    """
                    SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL) AS outbox_unsent,
                           (SELECT count(*) FROM recharge_runs
                            WHERE state IN ('pending', 'failing')) AS runs_in_flight,
                           (SELECT count(*) FROM unnest($1::text[]) AS t(id) WHERE NOT EXISTS
                               (SELECT 1 FROM usage_events u WHERE u.event_id = t.id))
                               AS events_missing
                    """,
                    sent,
                )
            finally:
                await conn.close()
            assert row is not None
            return dict(row)

        stats = queue_stats(client, NAMESPACE, 10_000)
        queued = sum(s.ready + s.delayed + s.in_flight for s in stats)
        return {"queued_messages": queued, **asyncio.run(from_db())}

    def settle(self, stack: Stack, sent: list[str]) -> bool:
        """Wait, bounded, until nothing is queued, unsent, in flight or unrecorded."""
        started = time.monotonic()
        deadline = started + self.args.settle_timeout
        client = self.redis.client()
        last: dict[str, int] = {}
        quiet = 0
        try:
            while time.monotonic() < deadline:
                self.revive(stack)
                try:
                    last = self.pending(client, sent)
                except Exception as exc:  # a server answering slowly is not the end
                    say(f"settle: {exc}")
                    time.sleep(2)
                    continue
                quiet = quiet + 1 if not any(last.values()) else 0
                if quiet >= 2:
                    self.outcome.settled_s = round(time.monotonic() - started, 1)
                    self.note(f"settled in {self.outcome.settled_s} s")
                    return True
                time.sleep(2)
        finally:
            client.close()
        self.note(f"NOT settled after {self.args.settle_timeout:g} s: {last}")
        self.outcome.injected["left_pending"] = last
        return False

    async def check(self, plan: Plan, settled: bool) -> list[checks.Check]:
        settings = Settings()
        conn = await asyncpg.connect(settings.asyncpg_dsn)
        client = aioredis.Redis.from_url(self.args.gateway_redis)
        sync_client = self.redis.client()
        try:
            gateway_charges = await SimulatedGateway(client, self.sim_prefix).all_charges()
            found = [
                await checks.events_debited_once(conn, plan.events),
                await checks.balances_equal_ledger(conn),
                await checks.charges_credited_once(conn, gateway_charges),
                await checks.suspensions_justified(conn),
                await checks.dead_letters_explained(conn, sync_client, NAMESPACE),
                await checks.audit(conn, settings),
            ]
        finally:
            await conn.close()
            await client.aclose()
            sync_client.close()
        drained = checks.Check(
            "settled",
            f"queues empty, outbox sent, no run in flight, every event recorded within "
            f"{self.args.settle_timeout:g} s of the end of the load",
            counts={"settle_s": str(self.outcome.settled_s), **await self.run_times()},
        )
        if not settled:
            drained.violate(f"still pending: {self.outcome.injected.get('left_pending')}")
            for run in await self.runs_in_flight():
                drained.violate(run)
        stuck = checks.Check(
            "processes_stop",
            f"every process group gone within {self.args.stop_timeout:g} s of SIGTERM to the "
            "group, and after a worker process was SIGKILLed",
        )
        assert self.stack is not None
        tally = self.stack.tally
        for kind, n in sorted((tally.stuck_after_term + tally.stuck_after_kill).items()):
            for _ in range(n):
                stuck.violate(f"{kind}: SIGKILLed after {self.args.stop_timeout:g} s")
        stuck.counts = {
            "stuck_after_sigterm": sum(tally.stuck_after_term.values()),
            "stuck_after_kill": sum(tally.stuck_after_kill.values()),
        }
        return [drained, stuck, *found]

    async def run_times(self) -> dict[str, int | str]:
        """How long recharge runs took, start to end (a killed charge worker's runs wait for
        redelivery: the tail is the recovery time of issue 12, fault 4)."""
        conn = await asyncpg.connect(Settings().asyncpg_dsn)
        try:
            row = await conn.fetchrow(
                """
                SELECT count(*) AS n,
                       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY s) AS p,
                       max(s) AS worst
                FROM (SELECT extract(epoch FROM finished_at - created_at) AS s
                      FROM recharge_runs WHERE finished_at IS NOT NULL) t
                """
            )
        finally:
            await conn.close()
        if row is None or not row["n"]:
            return {}
        p50, p99 = row["p"]
        return {
            "runs_finished": int(row["n"]),
            "run_s_p50": f"{p50:.1f}",
            "run_s_p99": f"{p99:.1f}",
            "run_s_max": f"{float(row['worst']):.1f}",
        }

    async def runs_in_flight(self) -> list[str]:
        """The runs left pending or failing, and their last charge: what waits on a message."""
        conn = await asyncpg.connect(Settings().asyncpg_dsn)
        try:
            rows = await conn.fetch(
                """
                SELECT r.id, r.account_id, r.state, r.created_at, c.status AS charge,
                       c.gateway_calls, now() - greatest(r.created_at, c.updated_at) AS idle
                FROM recharge_runs r
                LEFT JOIN LATERAL (SELECT * FROM charges x WHERE x.run_id = r.id
                                   ORDER BY x.seq DESC LIMIT 1) c ON true
                WHERE r.state IN ('pending', 'failing') ORDER BY r.id
                """
            )
        finally:
            await conn.close()
        return [
            f"run {r['id']} ({r['account_id']}) {r['state']}, last charge {r['charge']} after "
            f"{r['gateway_calls']} gateway calls, idle {r['idle'].total_seconds():.0f} s"
            for r in rows
        ]

    def execute(self) -> Outcome:
        try:
            env, accounts, declining = self.setup()
            # The declining accounts spend faster: they reach 0, and the ladder's end, in time.
            plan = make_plan(self.rng, self.run, accounts, self.args.events, 0.05, declining)
            self.stack = Stack(env, self.logdir, self.args.stop_timeout)
            self.stack.start_all()
            self.note("pipeline started: " + ", ".join(KINDS))
            publisher = self.play(self.stack, plan)
            settled = self.settle(self.stack, list(publisher.sent_ids))
            self.stack.stop_all()
            self.note("pipeline stopped")
            self.outcome.checks = asyncio.run(self.check(plan, settled))
            self.record(plan)
        finally:
            if self.stack is not None:
                self.stack.kill_all()
            asyncio.run(self.clean_gateway())
            self.redis.stop()
            self.pg.stop()
            self.outcome.wall_s = round(time.monotonic() - self.started, 1)
        if self.outcome.ok and not self.args.keep and self.args.workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            say(f"logs and data kept in {self.workdir}")
        return self.outcome

    def record(self, plan: Plan) -> None:
        assert self.stack is not None
        t = self.stack.tally
        self.outcome.injected.update(
            accounts=self.args.accounts,
            events_distinct=len(plan.events),
            messages=len(plan.messages),
            single_messages=plan.singles,
            batch_messages=plan.batches,
            duplicate_deliveries=plan.duplicates,
            sigkill=dict(sorted(t.kills.items())),
            sigterm_group=dict(sorted(t.terms.items())),
            sigterm_stop_s=t.term_stop_s,
            restarts=dict(sorted(t.restarts.items())),
            died_unasked=dict(sorted(t.died_unasked.items())),
            failed_starts=dict(sorted(t.failed_starts.items())),
            orphans_killed_after_main=dict(sorted(t.orphans_killed.items())),
            postgres_restarts=self.pg.restarts,
            redis_restarts=self.redis.restarts,
            redis_flushes=self.redis.flushes,
        )

    async def clean_gateway(self) -> None:
        client = aioredis.Redis.from_url(self.args.gateway_redis)
        try:
            await delete_state(client, self.sim_prefix)
        finally:
            await client.aclose()
