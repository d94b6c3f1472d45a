"""The chaos run's pure parts: what it sends and when it hurts the pipeline (the run itself:
tests/e2e/test_chaos.py)."""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal

import fakeredis

from bench.chaos.load import FaultFeeder, make_plan
from bench.chaos.run import schedule
from bench.chaos.stack import KINDS


def test_plan_sends_every_event_singles_batches_and_duplicates() -> None:
    accounts = [f"a{n}" for n in range(20)]
    hot = frozenset({"a0"})
    plan = make_plan(random.Random(1), "r", accounts, 5000, 0.05, hot)
    deliveries = [e for m in plan.messages for e in m]
    assert len(plan.events) == 5000
    assert {e.event_id for e in deliveries} == set(plan.events)
    # Each event once, plus the duplicates (an earlier event re-sent), about 5 % of them.
    assert len(deliveries) == 5000 + plan.duplicates
    assert 0.03 < plan.duplicates / 5000 < 0.07
    first_seen: dict[str, int] = {}
    for n, message in enumerate(plan.messages):
        for e in message:
            first_seen.setdefault(e.event_id, n)
    # A duplicate repeats an event of an earlier message, as a publisher's retry does.
    repeated = sum(
        1 for n, message in enumerate(plan.messages) for e in message if first_seen[e.event_id] < n
    )
    assert repeated == plan.duplicates
    assert plan.singles > 100 and plan.batches > 100
    assert max(len(m) for m in plan.messages) <= 50
    per_account = Counter(e.account_id for e in plan.events.values())
    assert per_account["a0"] > 2 * per_account.most_common()[-1][1]  # the hot one
    assert all(e.amount == e.amount.quantize(Decimal("0.01")) for e in deliveries)


def test_schedule_hurts_each_kind_and_each_server() -> None:
    actions = schedule(random.Random(3), 100.0, kills=10)
    kills = Counter(a.kind for a in actions if a.what == "kill")
    terms = Counter(a.kind for a in actions if a.what == "term")
    assert sum(kills.values()) == 10 and set(kills) == set(KINDS)
    assert max(kills.values()) - min(kills.values()) <= 1  # round the kinds
    assert terms == Counter(KINDS)
    assert Counter(a.what for a in actions if not a.kind) == Counter(
        {"pg_restart": 1, "redis_restart": 1, "flush": 1}
    )
    times = [a.at_s for a in actions]
    assert times == sorted(times) and times[0] >= 5 and times[-1] <= 90


def test_fault_mix_and_what_was_used() -> None:
    client = fakeredis.FakeRedis()
    feeder = FaultFeeder(client, "p", random.Random(5), low=5000)
    drawn = Counter(feeder.draw() for _ in range(20000))
    assert 0.08 < drawn["decline"] / 20000 < 0.12
    assert 0.04 < drawn["timeout"] / 20000 < 0.06
    assert 0.01 < drawn["lost_response"] / 20000 < 0.03
    feeder.top_up()
    assert client.llen("p:faults") == 10000
    consumed = [client.lpop("p:faults") for _ in range(100)]
    used = feeder.finish()
    assert sum(used.values()) == 100
    assert used["decline"] == sum(1 for f in consumed if f == b"decline")
    assert not client.exists("p:faults")
