"""The hostile corpus (tests/support/hostile.py) sent into a running balance worker, each bad
message between two good ones: every bad message kept with its reason, nothing lost, the
worker alive, and every good event beside them debited exactly once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from common.broker.factory import build_broker
from common.broker.publish import usage_batch_message, usage_message
from config.settings import Settings
from tests.support.factories import balance_and_ledger, create_account, new_id
from tests.support.hostile import CASES, good_event
from tests.support.procs import dramatiq_worker, running, worker_env
from tests.support.waiting import until

pytestmark = pytest.mark.slow

OPENING = Decimal("100")
AMOUNT = Decimal("0.01")  # every good event's


async def usage_rows(conn: Any, account: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE account_id = $1 AND kind = 'usage'", account
        )
    )


def test_the_corpus_is_large_and_its_names_unique() -> None:
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


async def test_every_hostile_message_is_kept_with_its_reason_and_good_traffic_flows(
    conn: Any, namespace: str
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance=str(OPENING), currency="EUR")
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
    hostile: dict[str, str] = {}  # message id -> case name
    good = 0
    for case in CASES:
        broker.enqueue(usage_message(good_event(acct)))
        hostile[broker.enqueue(case.build(acct)).message_id] = case.name
        good += 1 + case.good_events
    # A batch delivered twice: the second delivery is all duplicates, debited nothing more.
    twice = [good_event(acct) for _ in range(50)]
    for _ in range(2):
        broker.enqueue(usage_batch_message(twice))
    good += len(twice)
    broker.enqueue(usage_message(good_event(acct)))
    good += 1

    with running(
        dramatiq_worker("workers.balance", "usage", worker_env(namespace), processes=1, threads=4)
    ) as (worker,):
        rows = await until(
            lambda: conn.fetch(
                "SELECT message_id, reason FROM rejected_usage WHERE message_id = ANY($1)",
                list(hostile),
            ),
            lambda found: {r["message_id"] for r in found} >= set(hostile),
            timeout_s=120,
            what=f"{len(hostile)} rejections",
        )
        await until(
            lambda: usage_rows(conn, acct), lambda n: n >= good, timeout_s=60, what="good debits"
        )
        assert worker.alive()

    kept = {r["message_id"] for r in rows}
    assert not [name for mid, name in hostile.items() if mid not in kept]
    assert all(r["reason"].strip() for r in rows)
    assert await usage_rows(conn, acct) == good
    balance, total, _ = await balance_and_ledger(conn, acct)
    assert balance == total == OPENING - good * AMOUNT
    assert "Traceback" not in worker.output()
