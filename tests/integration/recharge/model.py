"""A plain model of the billing FAQ's recharge rules, as README's tables state them.

Written from the README, not from the code: it imports nothing from `common.recharge`, so a
rule the services get wrong cannot be copied into the expectation. It follows one account
message by message: what each delivery of `run_recharge`, `record_failure` and `recheck_tier`
must do, and what each request (usage, credit, card, settings) must do, with the simulated
gateway's behaviour (its fault queue, its idempotency records) mirrored alongside.

Time is counted in epochs: the machine moves the clock past the retry interval by one epoch at
a time, so "the interval has passed since the last failure" is `epoch > failure_epoch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

# README, "Auto-recharge rules": the level each tier fires at, as a fraction of T.
LEVEL_FRACTION = {
    0: Decimal(1),
    1: Decimal("0.75"),
    2: Decimal("0.50"),
    3: Decimal("0.25"),
    4: Decimal(0),
}
LAST_TIER = 4
SUCCEEDS = {"pm_card_visa"}
DECLINES = {
    "pm_card_chargeDeclined": "card_declined",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_authenticationRequired": "authentication_required",
}
TRANSIENT_FAULTS = {"timeout", "server_error", "rate_limit"}

Outcome = Literal["succeeded", "failed"]
CrashPoint = Literal["charge.before_gateway", "charge.after_gateway", "charge.after_credit"]


@dataclass
class Charge:
    key: str
    run_id: int
    kind: str
    amount: Decimal
    payment_method: str | None
    status: str = "pending"  # pending, succeeded, failed
    code: str | None = None
    calls: int = 1
    executed: Outcome | None = None  # what the gateway did with this key, if anything
    executed_code: str | None = None
    failed_epoch: int | None = None


@dataclass
class Run:
    id: int
    kind: str  # auto, manual
    amount: Decimal  # R at the start (auto), or the manual amount
    target: Decimal | None  # T at the start (auto)
    state: str = "pending"  # pending, failing, succeeded, failed, capped
    ok: int = 0
    superseded: bool = False
    pending: Charge | None = None
    seq: int = 0


@dataclass(frozen=True)
class Finished:
    state: str


@dataclass(frozen=True)
class Raised:
    kind: Literal["transient", "config", "crash"]


@dataclass
class Model:
    balance: Decimal
    min_amount: Decimal
    max_amount: Decimal
    run_max_charges: int
    status: str = "active"
    reason: str | None = None
    tier: int = 0
    failure_epoch: int | None = None
    auto_on: bool = False
    t: Decimal | None = None
    r: Decimal | None = None
    account_max: Decimal | None = None
    card: str | None = None
    epoch: int = 0
    runs: dict[int, Run] = field(default_factory=dict)
    charges: list[Charge] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # the simulated gateway's queue, mirrored
    gateway: dict[str, Outcome] = field(default_factory=dict)  # key -> what the gateway did
    gateway_codes: dict[str, str | None] = field(default_factory=dict)
    detached: set[str] = field(default_factory=set)  # cards detached at the gateway

    # --- what is in flight -------------------------------------------------------------------

    def in_flight(self, kind: str) -> Run | None:
        for run in self.runs.values():
            if run.kind == kind and run.state in ("pending", "failing"):
                return run
        return None

    # --- the rules ---------------------------------------------------------------------------

    def level(self) -> Decimal:
        assert self.t is not None
        return self.t * LEVEL_FRACTION[self.tier]

    def wants_auto_run(self) -> Literal["start", "interval", "no"]:
        """README: tier 0 fires below T; tier k at or below its level, once the interval
        since the last failure has passed; never while suspended or with a run in flight."""
        if not self.auto_on or self.status == "suspended" or self.in_flight("auto"):
            return "no"
        if self.tier == 0:
            return "start" if self.balance < self.level() else "no"
        if self.balance > self.level():
            return "no"
        assert self.failure_epoch is not None
        return "start" if self.epoch > self.failure_epoch else "interval"

    def prepaid(self) -> None:
        """Prepaid: at or below 0 with nothing armed or in flight is suspended."""
        if (
            self.status == "active"
            and self.balance <= 0
            and not self.auto_on
            and not self.in_flight("auto")
        ):
            self.status, self.reason = "suspended", "no_auto_recharge"

    def reactivate_if_above_zero(self) -> None:
        if self.status == "suspended" and self.balance > 0:
            self.status, self.reason = "active", None

    def refusal(self, amount: Decimal) -> bool:
        maximum = self.account_max if self.account_max is not None else self.max_amount
        return amount < self.min_amount or amount > maximum

    def start_auto(self, run_id: int) -> None:
        assert self.t is not None and self.r is not None
        self.runs[run_id] = Run(run_id, "auto", self.r, self.t)

    # --- requests ----------------------------------------------------------------------------

    def debit(self, amount: Decimal) -> bool:
        """Returns whether an automatic run must start."""
        self.balance -= amount
        start = self.wants_auto_run() == "start"
        if not start:
            self.prepaid()
        return start

    def credit(self, amount: Decimal) -> None:
        self.balance += amount
        self.reactivate_if_above_zero()

    def manual(self, amount: Decimal) -> bool:
        """Accepted?"""
        return not (self.refusal(amount) or self.card is None or self.in_flight("manual"))

    def attach_card(self, card: str) -> bool:
        """A new card on a failing or suspended account fires the armed tier at once."""
        self.card = card
        self.detached.discard(card)
        failing = self.tier > 0 or self.status == "suspended"
        return failing and self.auto_on and self.in_flight("auto") is None

    def auto_off(self) -> None:
        self.auto_on = False
        self.prepaid()

    def auto_on_with(self, t: Decimal, r: Decimal) -> tuple[bool, bool]:
        """(accepted, a run starts)."""
        if self.refusal(r):
            return False, False
        self.auto_on, self.t, self.r = True, t, r
        if self.status == "suspended" and self.reason == "no_auto_recharge":
            self.status, self.reason = "active", None
        return True, self.wants_auto_run() == "start"

    def set_max(self, amount: Decimal | None) -> bool:
        maximum = amount if amount is not None else self.max_amount
        if self.auto_on and self.r is not None and self.r > maximum:
            return False
        self.account_max = amount
        return True

    # --- deliveries ----------------------------------------------------------------------------

    def run_recharge(self, run_id: int, crash_at: CrashPoint | None) -> Finished | Raised:
        run = self.runs[run_id]
        charge: Charge | None = None  # stored by this delivery, not sent yet
        while True:
            if charge is None:
                if run.state != "pending":
                    return Finished(run.state)
                charge = run.pending
                if charge is not None:
                    charge.calls += 1  # resumed: an earlier delivery may have sent it
                else:
                    step = self._store_next(run)
                    if step is not None:
                        return step
                    charge = run.pending
                    assert charge is not None
            if crash_at == "charge.before_gateway":
                return Raised("crash")
            result = self._gateway_call(charge)
            if isinstance(result, Raised):
                return result
            if crash_at == "charge.after_gateway":
                return Raised("crash")
            self._record(run, charge, result)
            charge, step = None, None
            if run.state == "pending":
                # After a success, the run's next step commits with the credit: the run
                # finishes, or its next charge is stored (charging.record_and_advance).
                step = self._store_next(run)
                charge = run.pending
            if crash_at == "charge.after_credit":  # after the outcome, whatever it was
                return Raised("crash")
            if run.state == "failing":
                return Finished("failing")
            if step is not None:
                return step

    def _store_next(self, run: Run) -> Finished | None:
        """_next, with a charge that can never be sent failed at once (the run is failing)."""
        step = self._next(run)
        if step is not None:
            return step
        charge = run.pending
        assert charge is not None
        if charge.status == "failed":
            run.pending = None
            run.state = "failing"
            return Finished("failing")
        return None

    def _next(self, run: Run) -> Finished | None:
        """Decide the run's next charge and store it; or finish the run."""
        if run.kind == "manual":
            done = run.ok >= 1
        elif not self.auto_on:
            done = True
        else:
            # The settings in force at each step (README): T and R as they are now.
            assert self.t is not None and self.r is not None
            run.amount = self.r
            done = self.balance >= self.t
            if not done and run.ok >= self.run_max_charges:
                run.state = "capped"
                return Finished("capped")
        if done:
            run.state = "succeeded"
            if run.kind == "auto":
                self.prepaid()
            return Finished("succeeded")
        run.seq += 1
        charge = Charge(
            f"recharge-{run.id}-charge-{run.seq}", run.id, run.kind, run.amount, self.card
        )
        if self.card is None:
            charge.status, charge.code, charge.calls = "failed", "no_payment_method", 0
        elif self.refusal(run.amount):
            charge.status, charge.code, charge.calls = "failed", "recharge_amount_not_allowed", 0
        if charge.status == "failed":
            charge.failed_epoch = self.epoch
        self.charges.append(charge)
        run.pending = charge
        return None

    def _gateway_call(self, charge: Charge) -> Outcome | Raised:
        if charge.calls > 1 and charge.key in self.gateway:
            # Resumed: what the earlier call did is looked up first (the key may be forgotten);
            # the lookup is not a charge call, so no fault of the charge queue is used up.
            charge.executed = self.gateway[charge.key]
            charge.executed_code = self.gateway_codes[charge.key]
            return charge.executed
        fault = self.faults.pop(0) if self.faults else None
        if fault == "none":  # a placeholder: this call behaves normally
            fault = None
        if fault in TRANSIENT_FAULTS:
            return Raised("transient")
        if fault == "config_error":
            return Raised("config")
        done = self.gateway.get(charge.key)
        if done is None and charge.payment_method in self.detached:
            # Refused before anything happens (Stripe's 400): nothing recorded, the key free.
            charge.executed, charge.executed_code = "failed", "no_payment_method"
            return Raised("transient") if fault == "lost_response" else "failed"
        if done is None:
            assert charge.payment_method is not None
            if fault == "decline":
                done, code = "failed", "card_declined"
            elif charge.payment_method in SUCCEEDS:
                done, code = "succeeded", None
            else:
                done, code = "failed", DECLINES[charge.payment_method]
            self.gateway[charge.key] = done
            self.gateway_codes[charge.key] = code
        charge.executed = done
        charge.executed_code = self.gateway_codes[charge.key]
        if fault == "lost_response":
            return Raised("transient")
        return done

    def _record(self, run: Run, charge: Charge, result: Outcome) -> None:
        run.pending = None
        if result == "failed":
            charge.status = "failed"
            charge.code = charge.executed_code
            charge.failed_epoch = self.epoch
            run.state = "failing"
            return
        charge.status = "succeeded"
        run.ok += 1
        self.balance += charge.amount
        self.reactivate_if_above_zero()
        if self.status == "active":
            # Any successful charge resets the ladder, unless the account stays suspended; a
            # failure not yet counted happened before this success and counts for nothing.
            self.tier, self.failure_epoch = 0, None
            auto = self.in_flight("auto")
            if auto is not None and auto.state == "failing":
                auto.superseded = True

    def record_failure(self, run_id: int) -> str:
        run = self.runs[run_id]
        if run.state != "failing":
            return "already_handled"
        run.state = "failed"
        if run.kind == "manual":
            return "reported"
        if run.superseded:
            return "superseded"
        if not self.auto_on:
            self.prepaid()
            return "reported"
        charge = next(c for c in reversed(self.charges) if c.run_id == run_id)
        assert charge.failed_epoch is not None
        self.failure_epoch = charge.failed_epoch
        if self.tier < LAST_TIER:
            self.tier += 1
            return "armed"
        if self.balance <= 0:
            self.status, self.reason = "suspended", "ladder"
            return "suspended"
        return "armed"  # the 0 % attempt failed with money left: stays armed at 0

    def recheck(self) -> bool:
        return self.wants_auto_run() == "start"

    def advance_clock(self) -> None:
        self.epoch += 1
