"""The recharge engine against a model of its rules, through random interleavings.

A hypothesis state machine drives the real services (PostgreSQL, the simulated gateway in
Redis, the debit, charge, retry and relay code paths called in-process, without dramatiq)
through debits (small, large, crossing several levels, redelivered), support credits, manual
recharges, card changes, auto-recharge on/off and T/R changes, limit changes, gateway outcomes
per call (success, decline, timeout, lost response, our misconfiguration), a crash at every
crash point followed by redelivery, duplicate deliveries, and the clock moving past the retry
interval. After every step the database must agree with `model.Model`, a plain model of
README's rules that shares no code with `common.recharge`.

The machine is the relay and the workers: it moves the account's outbox rows into a mailbox
and delivers them when a rule says so, so a failure can wait while a manual recharge succeeds,
a debit can land between two charges of a run, and so on.

CI runs a fixed set of 150 examples (the `ci` profile is derandomized: the same examples every
run, so a failure reproduces); a nightly-sized run of 3,000 fresh ones:
`pytest tests/integration/recharge/test_model.py --hypothesis-profile=long -o timeout=0`
(README, "Development"). `CONTACTO_MODEL_EXAMPLES=N` overrides the number of examples.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import common.recharge.charging as charging
import common.recharge.store as recharge_store
from common.accounts.store import AccountError
from common.accounts.support import create_account, credit_account
from common.audit import run_audit
from common.db.engine import create_engine, raw_connection
from common.gateway import GatewayConfigError, TransientGatewayError
from common.gateway.simulated import SimulatedGateway, delete_state, inject_faults
from common.money import MoneyError
from common.recharge.charging import run_to_completion
from common.recharge.config import ChargeLimits, PolicyConfig
from common.recharge.ladder import (
    AlreadyHandled,
    Armed,
    Reported,
    RunStarted,
    Suspended,
    recheck_tier,
    record_failure,
)
from common.recharge.limits import LimitError
from common.recharge.manual import request_manual_recharge
from common.recharge.settings import attach_card, set_auto_recharge, set_max_recharge
from common.usage.service import apply_submissions
from config.settings import Settings
from tests.integration.recharge.model import CrashPoint, Finished, Model, Raised, Run
from tests.support.factories import event, submission

T = TypeVar("T")
INTERVAL = timedelta(hours=1)
RUN_MAX_CHARGES = 4
GLOBAL_MAX = Decimal(500)
CRASH_POINTS: tuple[CrashPoint, ...] = (
    "charge.before_gateway",
    "charge.after_gateway",
    "charge.after_credit",
)


class Crash(BaseException):
    """The process died at a crash point: nothing after it ran, the message is redelivered."""


@dataclass
class Message:
    outbox_id: int
    actor: str
    kwargs: dict[str, Any]
    due: bool


class Machine(RuleBasedStateMachine):
    current: ClassVar[Machine | None] = None  # the example running, for the crash points
    runner: asyncio.Runner
    engine: Any
    redis: aioredis.Redis

    def __init__(self) -> None:
        super().__init__()
        self.account = f"model-{uuid.uuid4().hex[:12]}"
        self.prefix = f"test-model-{uuid.uuid4().hex[:8]}"
        self.sim = SimulatedGateway(self.redis, self.prefix)
        self.model = Model(
            balance=Decimal(100),
            min_amount=Decimal(20),
            max_amount=GLOBAL_MAX,
            run_max_charges=RUN_MAX_CHARGES,
        )
        self.mailbox: list[Message] = []
        self.dead: list[Message] = []
        self.events: list[dict[str, Any]] = []
        self.last_auto_capped = False
        self.crash_at: CrashPoint | None = None
        self.debit_on_finish: str | None = None
        self.waiting_debit: asyncio.Future[Any] | None = None
        self.run(self._open())

    # --- plumbing ------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    @property
    def settings(self) -> Settings:
        return Settings(
            MIN_RECHARGE_AMOUNT=str(self.model.min_amount),
            MAX_RECHARGE_AMOUNT=str(GLOBAL_MAX),
            RETRY_MIN_INTERVAL_SECONDS=INTERVAL.total_seconds(),
            CONTACTO_RUN_MAX_CHARGES=RUN_MAX_CHARGES,
        )

    @property
    def policy(self) -> PolicyConfig:
        return PolicyConfig(retry_min_interval=INTERVAL, run_max_charges=RUN_MAX_CHARGES)

    @property
    def limits(self) -> ChargeLimits:
        return ChargeLimits(self.model.min_amount, GLOBAL_MAX)

    async def _open(self) -> None:
        async with raw_connection(self.engine) as conn:
            await create_account(conn, self.account, "USD")
            await credit_account(conn, self.account, Decimal(100), "opening balance")

    def teardown(self) -> None:
        try:
            self.drain()
            self.run(self._audit())
        finally:
            self.run(delete_state(self.redis, self.prefix))

    async def _audit(self) -> None:
        async with raw_connection(self.engine) as conn:
            results = await run_audit(conn, limit=10_000, settings=self.settings)
        m = self.model
        skip = {"outbox_drained"}  # the machine, not a relay, takes the rows
        if m.auto_on and m.r is not None and m.refusal(m.r):
            skip.add("recharge_amounts_within_limits")  # stranded on purpose: the limits moved
        mine = {
            r.name: [row for row in r.offending if row.get("account_id") == self.account]
            for r in results
            if r.name not in skip
        }
        assert {name: rows for name, rows in mine.items() if rows} == {}

    def collect(self) -> None:
        """The relay: move the account's unsent outbox rows into the mailbox."""
        self.mailbox.extend(self.run(self._collect()))

    async def _collect(self) -> list[Message]:
        async with raw_connection(self.engine) as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT o.id, o.actor_name, o.payload, o.deliver_at <= now() AS due
                FROM outbox o
                WHERE o.sent_at IS NULL AND o.destination = 'queue'
                  AND (o.payload::jsonb ->> 'account_id' = $1
                       OR (o.payload::jsonb ->> 'run_id')::bigint IN
                          (SELECT id FROM recharge_runs WHERE account_id = $1))
                ORDER BY o.id
                """,
                self.account,
            )
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY($1)", [r["id"] for r in rows]
            )
        return [Message(r["id"], r["actor_name"], json.loads(r["payload"]), r["due"]) for r in rows]

    def new_runs(self, before: set[int]) -> list[int]:
        return [r for r in self.run(self._runs()) if r not in before]

    async def _runs(self) -> list[int]:
        async with raw_connection(self.engine) as conn:
            return [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM recharge_runs WHERE account_id = $1 ORDER BY id", self.account
                )
            ]

    def expect_runs(self, before: set[int], *, auto: bool) -> None:
        """Bind the automatic run the services started (if any) to the model's expectation."""
        started = self.new_runs(before)
        assert len(started) == (1 if auto else 0), (started, auto, self.model)
        for run_id in started:
            self.model.start_auto(run_id)
            self.last_auto_capped = False

    def known_runs(self) -> set[int]:
        return set(self.run(self._runs()))

    # --- requests ------------------------------------------------------------------------------

    @initialize(
        opening=st.sampled_from(["100", "30", "5"]),
        card=st.sampled_from([None, "pm_card_visa", "pm_card_visa", "pm_card_chargeDeclined"]),
        auto=st.sampled_from([None, ("60", "20"), ("100", "20"), ("100", "25"), ("100", "40")]),
        failures=st.sampled_from([0, 0, 1, 2, 4]),
    )
    def an_account_as_customers_have_them(
        self, opening: str, card: str | None, auto: tuple[str, str] | None, failures: int
    ) -> None:
        """Start from an account in one of the shapes customers give it: a card or none,
        auto-recharge on (with T and R) or off, a balance above or below T, and maybe some
        failed attempts behind it (a tier armed, its interval passed)."""
        if opening != "100":
            self.debit(str(Decimal(100) - Decimal(opening)))
        if auto is not None:
            self.auto_recharge_on(*auto)
            for _ in range(failures):
                if self.model.status == "suspended":
                    break
                self.change_card("pm_card_chargeDeclined")
                self.debit("1")
                self.drain(advance_clock=False)
                self.time_passes_the_retry_interval()
        if card is not None:
            self.change_card(card)

    @rule(amount=st.sampled_from(["1", "7", "19", "33", "60", "120", "260"]))
    def debit(self, amount: str) -> None:
        before = self.known_runs()
        ev = event(self.account, amount)
        self.events.append(ev)
        self.run(apply_submissions(self.engine, self.policy, [submission(ev)]))
        self.expect_runs(before, auto=self.model.debit(Decimal(amount)))
        self.collect()

    @precondition(lambda self: bool(self.events))
    @rule(pick=st.integers(min_value=0))
    def redeliver_a_debit(self, pick: int) -> None:
        """A usage message delivered again (the worker died before its ack): no effect."""
        ev = self.events[pick % len(self.events)]
        [outcome] = self.run(apply_submissions(self.engine, self.policy, [submission(ev)]))
        assert (outcome.applied, outcome.duplicates) == (0, 1)

    @rule(amount=st.sampled_from(["5", "30", "80"]))
    def support_credit(self, amount: str) -> None:
        self.run(self._credit(Decimal(amount)))
        self.model.credit(Decimal(amount))
        self.collect()

    async def _credit(self, amount: Decimal) -> None:
        async with raw_connection(self.engine) as conn:
            await credit_account(conn, self.account, amount, "support")

    @rule(amount=st.sampled_from(["20", "25", "50", "600"]))
    def manual_recharge(self, amount: str) -> None:
        before = self.known_runs()
        accepted = self.model.manual(Decimal(amount))
        try:
            self.run(self._manual(Decimal(amount)))
        except (LimitError, AccountError):
            assert not accepted
            return
        assert accepted
        [run_id] = self.new_runs(before)
        self.model.runs[run_id] = Run(run_id, "manual", Decimal(amount), None)
        self.collect()

    async def _manual(self, amount: Decimal) -> int:
        async with raw_connection(self.engine) as conn:
            return await request_manual_recharge(conn, self.account, amount, self.settings)

    @rule(
        card=st.sampled_from(
            ["pm_card_visa", "pm_card_chargeDeclined", "pm_card_authenticationRequired"]
        )
    )
    def change_card(self, card: str) -> None:
        before = self.known_runs()
        fires = self.model.attach_card(card)
        self.run(self._card(card))
        self.expect_runs(before, auto=fires)
        self.collect()

    async def _card(self, card: str) -> None:
        async with raw_connection(self.engine) as conn:
            await attach_card(conn, self.sim, self.account, card, self.settings)

    @rule(t=st.sampled_from(["60", "100"]), r=st.sampled_from(["20", "25", "40"]))
    def auto_recharge_on(self, t: str, r: str) -> None:
        before = self.known_runs()
        accepted, starts = self.model.auto_on_with(Decimal(t), Decimal(r))
        try:
            self.run(self._auto(Decimal(t), Decimal(r)))
        except (LimitError, MoneyError):
            assert not accepted
            return
        assert accepted
        self.expect_runs(before, auto=starts)
        self.collect()

    @rule()
    def auto_recharge_off(self) -> None:
        self.run(self._auto(None, None))
        self.model.auto_off()
        self.collect()

    async def _auto(self, t: Decimal | None, r: Decimal | None) -> None:
        async with raw_connection(self.engine) as conn:
            await set_auto_recharge(
                conn, self.account, self.settings, balance_amount=t, recharge_amount=r
            )

    @rule(amount=st.sampled_from([None, "30", "1000"]))
    def support_sets_the_maximum(self, amount: str | None) -> None:
        value = None if amount is None else Decimal(amount)
        accepted = self.model.set_max(value)
        try:
            self.run(self._max(value))
        except LimitError:
            assert not accepted
            return
        assert accepted

    async def _max(self, amount: Decimal | None) -> None:
        async with raw_connection(self.engine) as conn:
            await set_max_recharge(conn, self.account, amount, self.settings)

    @rule(minimum=st.sampled_from(["20", "30"]))
    def the_minimum_recharge_setting_changes(self, minimum: str) -> None:
        """MIN_RECHARGE_AMOUNT changed by a deploy: runs already configured may be stranded."""
        self.model.min_amount = Decimal(minimum)

    # --- the gateway and the clock -------------------------------------------------------------

    @rule(
        fault=st.sampled_from(
            [
                "none",
                "decline",
                "decline",
                "timeout",
                "lost_response",
                "server_error",
                "config_error",
            ]
        )
    )
    def the_next_gateway_call_goes_wrong(self, fault: str) -> None:
        self.run(inject_faults(self.redis, self.prefix, fault))
        self.model.faults.append(fault)

    @rule()
    def the_gateway_takes_one_charge_then_declines_the_next(self) -> None:
        """The card works for one charge of a run and is declined for the next one."""
        self.the_next_gateway_call_goes_wrong("none")
        self.the_next_gateway_call_goes_wrong("decline")

    @rule()
    def the_gateway_forgets_its_keys(self) -> None:
        """More than 24 hours pass at Stripe: every idempotency key is pruned."""
        for charge in self.model.charges:
            self.run(self.sim.forget_key(charge.key))

    @precondition(lambda self: self.model.card is not None)
    @rule()
    def the_card_is_detached_at_the_gateway(self) -> None:
        """The customer removed the card at Stripe; the account still names it."""
        card = self.model.card
        assert card is not None
        self.run(self.sim.detach_card(customer_id=f"cus_sim_{self.account}", payment_method=card))
        self.model.detached.add(card)

    @rule()
    def time_passes_the_retry_interval(self) -> None:
        self.run(self._shift_clock())
        self.model.advance_clock()
        for message in self.mailbox:
            message.due = True

    async def _shift_clock(self) -> None:
        # Everything the account's ladder measures time from moves one interval into the past.
        shift = INTERVAL + timedelta(seconds=1)
        async with raw_connection(self.engine) as conn:
            await conn.execute(
                "UPDATE accounts SET last_failure_at = last_failure_at - $2::interval "
                "WHERE id = $1",
                self.account,
                shift,
            )
            await conn.execute(
                "UPDATE charges SET updated_at = updated_at - $2::interval WHERE account_id = $1",
                self.account,
                shift,
            )

    # --- deliveries ----------------------------------------------------------------------------

    @precondition(lambda self: any(m.due for m in self.mailbox))
    @rule(
        pick=st.integers(min_value=0),
        crash=st.sampled_from([None, None, None, *CRASH_POINTS]),
        duplicate=st.booleans(),
    )
    def deliver(self, pick: int, crash: CrashPoint | None, duplicate: bool) -> None:
        due = [m for m in self.mailbox if m.due]
        message = due[pick % len(due)]
        if self.deliver_one(message, crash) and not duplicate:
            self.mailbox.remove(message)
        self.collect()

    @precondition(
        lambda self: any(
            m.due and m.actor in ("run_recharge", "record_failure") for m in self.mailbox
        )
    )
    @rule(pick=st.integers(min_value=0), amount=st.sampled_from(["7", "40", "120"]))
    def a_debit_waits_on_the_lock_of_a_run_finishing(self, pick: int, amount: str) -> None:
        """A debit that blocks on the account lock while the transaction finishing a run holds
        it, and goes on when that commits: it must see the run finished (defect 6)."""
        due = [m for m in self.mailbox if m.due and m.actor in ("run_recharge", "record_failure")]
        message = due[pick % len(due)]
        before = self.known_runs()
        self.debit_on_finish = amount
        if self.deliver_one(message, None):
            self.mailbox.remove(message)
        self.debit_on_finish = None
        if self.waiting_debit is None:  # no run finished in that delivery: an ordinary debit
            self.debit(amount)
            return
        self.run(self._the_waiting_debit())
        self.expect_runs(before, auto=self.model.debit(Decimal(amount)))
        self.collect()

    async def _the_waiting_debit(self) -> None:
        assert self.waiting_debit is not None
        [outcome] = await self.waiting_debit
        self.waiting_debit = None
        assert outcome.applied == 1

    async def finish_run_with_a_debit_waiting(
        self, finish: Any, conn: Any, run: Any, state: str, error: str | None = None
    ) -> None:
        await finish(conn, run, state, error)
        if self.debit_on_finish is None:
            return
        ev = event(self.account, self.debit_on_finish)
        self.debit_on_finish = None
        self.events.append(ev)
        self.waiting_debit = asyncio.ensure_future(
            apply_submissions(self.engine, self.policy, [submission(ev)])
        )
        async with raw_connection(self.engine) as probe:
            for _ in range(500):
                if await probe.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                ):
                    return
                await asyncio.sleep(0.005)
        raise AssertionError("the debit never waited on the account lock")

    @precondition(lambda self: bool(self.dead))
    @rule()
    def an_operator_requeues_the_dead_letters(self) -> None:
        """`dlq requeue` after the misconfiguration was fixed."""
        self.mailbox.extend(self.dead)
        self.dead.clear()

    def deliver_one(self, message: Message, crash: CrashPoint | None) -> bool:
        """Deliver once; True when the message is done with (acked or dead-lettered)."""
        if message.actor == "run_recharge":
            return self.deliver_run(message, crash)
        if message.actor == "record_failure":
            self.deliver_failure(message.kwargs["run_id"])
            return True
        assert message.actor == "recheck_tier", message
        self.deliver_recheck()
        return True

    def deliver_run(self, message: Message, crash: CrashPoint | None) -> bool:
        run_id = message.kwargs["run_id"]
        expected = self.model.run_recharge(run_id, crash)
        self.crash_at = crash
        try:
            state = self.run(run_to_completion(self.engine, self.sim, run_id, self.limits))
        except Crash:
            assert expected == Raised("crash"), expected
            return False
        except TransientGatewayError:
            assert expected == Raised("transient"), expected
            return False
        except GatewayConfigError:
            assert expected == Raised("config"), expected
            self.dead.append(message)
            return True
        finally:
            self.crash_at = None
        assert expected == Finished(state.value), (expected, state)
        if state == "capped":
            self.last_auto_capped = self.model.runs[run_id].kind == "auto"
        return True

    def deliver_failure(self, run_id: int) -> None:
        expected = self.model.record_failure(run_id)
        outcome = self.run(self._record_failure(run_id))
        match outcome:
            case AlreadyHandled():
                assert expected == "already_handled"
            case Reported(why="superseded"):
                assert expected == "superseded"
            case Reported():
                assert expected == "reported"
            case Armed():
                assert expected == "armed"
            case Suspended():
                assert expected == "suspended" or self.model.status == "suspended"

    async def _record_failure(self, run_id: int) -> Any:
        async with raw_connection(self.engine) as conn:
            return await record_failure(conn, run_id, self.policy)

    def deliver_recheck(self) -> None:
        before = self.known_runs()
        starts = self.model.recheck()
        outcome = self.run(self._recheck())
        assert isinstance(outcome, RunStarted) == starts, (outcome, starts)
        self.expect_runs(before, auto=starts)

    async def _recheck(self) -> Any:
        async with raw_connection(self.engine) as conn:
            return await recheck_tier(conn, self.account, self.policy)

    def drain(self, *, advance_clock: bool = True) -> None:
        """Deliver everything, with the gateway well again, until nothing is left to do (or,
        without `advance_clock`, nothing due now)."""
        self.model.faults.clear()
        self.run(self._forget_faults())
        self.mailbox.extend(self.dead)
        self.dead.clear()
        for _ in range(200):
            self.collect()
            if not self.mailbox:
                return
            if not any(m.due for m in self.mailbox):
                if not advance_clock:
                    return
                self.time_passes_the_retry_interval()
            message = next(m for m in self.mailbox if m.due)
            if self.deliver_one(message, None):
                self.mailbox.remove(message)
        raise AssertionError("the account never came to rest")

    async def _forget_faults(self) -> None:
        await self.redis.delete(f"{self.prefix}:faults")

    # --- the invariants ------------------------------------------------------------------------

    @invariant()
    def the_database_agrees_with_the_model(self) -> None:
        self.run(self._check())

    async def _check(self) -> None:
        m = self.model
        async with raw_connection(self.engine) as conn:
            row = await conn.fetchrow(
                "SELECT a.*, (SELECT coalesce(sum(amount), 0) FROM ledger_entries l "
                "WHERE l.account_id = a.id) AS ledger FROM accounts a WHERE a.id = $1",
                self.account,
            )
            charges = await conn.fetch(
                "SELECT c.*, r.kind, (SELECT count(*) FROM ledger_entries l "
                "WHERE l.kind = 'recharge' AND l.reference = 'charge-' || c.id) AS credits "
                "FROM charges c JOIN recharge_runs r ON r.id = c.run_id "
                "WHERE c.account_id = $1 ORDER BY c.id",
                self.account,
            )
            runs = await conn.fetch(
                "SELECT id, kind, state FROM recharge_runs WHERE account_id = $1 "
                "AND state IN ('pending', 'failing')",
                self.account,
            )
        assert row["balance"] == m.balance == row["ledger"]
        assert (row["status"], row["suspended_reason"]) == (m.status, m.reason)
        assert row["retry_tier"] == m.tier
        assert (row["last_failure_at"] is None) == (m.tier == 0)
        assert row["auto_recharge_enabled"] == m.auto_on
        assert [(c["kind"], c["amount"], c["status"], c["idempotency_key"]) for c in charges] == [
            (c.kind, c.amount, c.status, c.key) for c in m.charges
        ]
        for db, mc in zip(charges, m.charges, strict=True):
            if mc.code is not None:
                assert db["failure_code"] == mc.code
            # No charge credited twice; every credit has its charge.
            assert db["credits"] == (1 if db["status"] == "succeeded" else 0)
        # Every gateway charge has exactly one credit: money moved once per key, and only
        # for a charge that is (or, still pending, will be) credited.
        moved = {c["idempotency_key"]: c for c in await self.sim.all_charges()}
        for mc in m.charges:
            taken = await self.sim.charges_made(mc.key)
            assert taken == (1 if m.gateway.get(mc.key) == "succeeded" else 0), mc
            if mc.status == "succeeded":
                assert moved[mc.key]["result"] == "succeeded"
        # No run blocked without a way forward: each run in flight has its message.
        waiting = {(msg.actor, msg.kwargs.get("run_id")) for msg in self.mailbox + self.dead}
        for run in runs:
            actor = "run_recharge" if run["state"] == "pending" else "record_failure"
            assert (actor, run["id"]) in waiting, (run, self.mailbox)
        model_flight = {r.id for r in m.runs.values() if r.state in ("pending", "failing")}
        assert {r["id"] for r in runs} == model_flight
        # An armed attempt that is due happens, by a debit or by the retry worker's re-check.
        wants = m.wants_auto_run()
        if wants != "no" and not self.last_auto_capped:
            assert any(msg.actor == "recheck_tier" for msg in self.mailbox), (wants, m)


def _crash_point(name: str) -> None:
    machine = Machine.current
    if machine is not None and machine.crash_at == name:
        machine.crash_at = None
        raise Crash(name)


@pytest.fixture
def machine_runner(settings: Settings) -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        Machine.runner = runner
        Machine.engine = create_engine(settings, pool_size=3)
        Machine.redis = aioredis.Redis.from_url(settings.redis_url)
        try:
            yield runner
        finally:
            runner.run(Machine.engine.dispose())
            runner.run(Machine.redis.aclose())


def test_the_recharge_engine_follows_its_model(
    machine_runner: asyncio.Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(charging, "crash_point", _crash_point)
    finish = recharge_store.finish_run

    async def finish_run(conn: Any, run: Any, state: str, error: str | None = None) -> None:
        machine = Machine.current
        if machine is None:
            await finish(conn, run, state, error)
        else:
            await machine.finish_run_with_a_debit_waiting(finish, conn, run, state, error)

    monkeypatch.setattr(recharge_store, "finish_run", finish_run)

    def factory() -> Machine:
        machine = Machine()
        Machine.current = machine
        return machine

    # 1.5 x the profile's examples: 150 in CI (a minute), 3,000 with --hypothesis-profile=long.
    examples = int(os.environ.get("CONTACTO_MODEL_EXAMPLES", "0"))
    run_state_machine_as_test(
        factory,  # type: ignore[arg-type]  # a factory is accepted, as documented
        settings=settings(
            max_examples=examples or settings().max_examples * 3 // 2,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
