"""What the run sends: the usage events (single and batched, with duplicates) as the upstream
platform sends them, and the simulated gateway's faults, kept topped up with a random mix.

Both are plain threads: the dramatiq broker and redis-py are synchronous, and the harness's
main thread is busy hurting the pipeline meanwhile.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import dramatiq
import redis

from bench.pipeline.console import say
from common.broker.publish import usage_batch_message, usage_message

# The gateway's answer to each charge call (timeouts and lost responses are retried by the
# charge worker with the same idempotency key, so each is one more call, not one more charge).
FAULT_MIX: Final = (("decline", 0.10), ("timeout", 0.05), ("lost_response", 0.02))
MAX_BATCH: Final = 50
HOT_WEIGHT: Final = 3


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    account_id: str
    amount: Decimal

    def payload(self, occurred_at: str) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "account_id": self.account_id,
            "amount": str(self.amount),
            "currency": "USD",
            "occurred_at": occurred_at,
            "kind": "voice",
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """The messages to send, in order: each a list of events (one: `record_usage`; more:
    `record_usage_batch`). `events` holds each distinct event once."""

    events: dict[str, Event]
    messages: list[list[Event]]
    duplicates: int  # deliveries of an event already sent in an earlier message

    @property
    def singles(self) -> int:
        return sum(1 for m in self.messages if len(m) == 1)

    @property
    def batches(self) -> int:
        return len(self.messages) - self.singles


def make_plan(
    rng: random.Random,
    run: str,
    accounts: list[str],
    events: int,
    duplicate_rate: float,
    hot: frozenset[str] = frozenset(),
) -> Plan:
    """`events` distinct events over `accounts`, half sent one by one and half in batches of
    2 to MAX_BATCH, plus `duplicate_rate` of re-sent earlier events (a publisher's retry).
    `hot` accounts get three times the usage of the others."""
    weights = [HOT_WEIGHT if a in hot else 1 for a in accounts]
    distinct: dict[str, Event] = {}
    sent: list[Event] = []  # already in an earlier message: what a duplicate may repeat
    messages: list[list[Event]] = []
    duplicates = 0
    i = 0
    while i < events:
        size = 1 if rng.random() < 0.5 else rng.randint(2, MAX_BATCH)
        message: list[Event] = []
        for _ in range(size):
            if sent and rng.random() < duplicate_rate:
                message.append(rng.choice(sent))
                duplicates += 1
                continue
            if i >= events:
                break
            # Cents: the sums to check are exact, and so is every balance.
            ev = Event(
                f"ev-{run}-{i:07d}",
                rng.choices(accounts, weights)[0],
                Decimal(rng.randint(1, 200)) / 100,
            )
            distinct[ev.event_id] = ev
            message.append(ev)
            i += 1
        if message:
            messages.append(message)
            sent.extend(e for e in message if e.event_id in distinct)
    return Plan(distinct, messages, duplicates)


@dataclass
class Publisher:
    """Sends the plan's messages over `duration_s`, retrying each until Redis takes it (the
    run restarts and flushes Redis meanwhile: an upstream retries)."""

    broker: dramatiq.Broker
    plan: Plan
    duration_s: float
    sent_messages: int = 0
    sent_ids: list[str] = field(default_factory=list)  # distinct events, in send order
    publish_errors: int = 0
    replayed: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, events: list[Event]) -> None:
        occurred_at = datetime.now(UTC).isoformat()
        payloads = [e.payload(occurred_at) for e in events]
        message = usage_message(payloads[0]) if len(payloads) == 1 else None
        msg = message or usage_batch_message(payloads)
        while not self.stop.is_set():
            try:
                with self.lock:
                    self.broker.enqueue(msg)
                return
            except Exception as exc:  # redis down, loading, or a connection cut by a restart
                self.publish_errors += 1
                if self.publish_errors % 20 == 1:
                    say(f"publish failed ({type(exc).__name__}): retrying")
                time.sleep(0.2)

    def run(self) -> None:
        started = time.monotonic()
        seen: set[str] = set()
        total = len(self.plan.messages)
        for n, message in enumerate(self.plan.messages):
            if self.stop.is_set():
                break
            # Evenly over the duration; a late start catches up at once.
            due = started + self.duration_s * n / total
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            self.send(message)
            self.sent_messages += 1
            for e in message:
                if e.event_id not in seen:
                    seen.add(e.event_id)
                    self.sent_ids.append(e.event_id)
        self.done.set()

    def replay(self, missing: list[str]) -> None:
        """Send again, in batches, events the upstream has no receipt for (what it does after
        a broker lost its queues: usage is the upstream's to republish, README)."""
        for k in range(0, len(missing), 100):
            self.send([self.plan.events[e] for e in missing[k : k + 100]])
            self.replayed += len(missing[k : k + 100])


@dataclass
class FaultFeeder:
    """Keeps the simulated gateway's fault list (`<prefix>:faults`, one popped per charge
    call) at least `low` long with a random mix; "none" lets a call through."""

    client: redis.Redis
    prefix: str
    rng: random.Random
    low: int = 200
    pushed: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def draw(self) -> str:
        x = self.rng.random()
        for name, share in FAULT_MIX:
            if x < share:
                return name
            x -= share
        return "none"

    def top_up(self) -> None:
        key = f"{self.prefix}:faults"
        if int(self.client.llen(key)) >= self.low:
            return
        faults = [self.draw() for _ in range(2 * self.low)]
        self.client.rpush(key, *faults)
        for f in faults:
            self.pushed[f] = self.pushed.get(f, 0) + 1

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.top_up()
            except redis.RedisError as exc:
                say(f"fault feeder: {exc}")

    def finish(self) -> dict[str, int]:
        """Stop, remove what is left, and return the faults the gateway consumed, by kind."""
        self.stop.set()
        key = f"{self.prefix}:faults"
        pipe = self.client.pipeline()
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        left, _ = pipe.execute()
        used = dict(self.pushed)
        for raw in left:
            name = raw.decode()
            used[name] -= 1
        return used
