"""A corpus of hostile usage messages: what a buggy or malicious producer puts on queue `usage`.

Each case is a dramatiq message built against one account (EUR, so that a wrong currency is
one of the faults). What the pipeline must do with every one of them: keep it with a reason
(`rejected_usage`), lose nothing, stay alive, and keep debiting the good traffic beside it.
Used by tests/e2e/test_hostile_input.py and timed by `python -m bench.hostile`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dramatiq

from common.names import ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH, QUEUE_USAGE

MEGABYTE = 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[str], dramatiq.Message[Any]]  # account id -> the message
    # Events of the message that are good and must be debited (a mixed batch).
    good_events: int = 0


def good_event(account: str, **changes: Any) -> dict[str, Any]:
    return {
        "event_id": f"hostile-ok-{uuid.uuid4().hex}",
        "account_id": account,
        "amount": "0.01",
        "currency": "EUR",
        "occurred_at": datetime.now(UTC).isoformat(),
        "kind": "voice",
        **changes,
    }


def _message(actor: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=QUEUE_USAGE, actor_name=actor, args=args, kwargs=kwargs, options={}
    )


def single(name: str, **changes: Any) -> Case:
    """record_usage with one field changed (a value of `DROP` removes it)."""

    def build(account: str) -> dramatiq.Message[Any]:
        kwargs = good_event(account, event_id=f"hostile-{name}-{uuid.uuid4().hex}")
        for key, value in changes.items():
            if value is DROP:
                kwargs.pop(key)
            else:
                kwargs[key] = value
        return _message(ACTOR_RECORD_USAGE, (), kwargs)

    return Case(name, build)


def raw(
    name: str, actor: str, args: tuple[Any, ...], kwargs: Callable[[str], dict[str, Any]]
) -> Case:
    return Case(name, lambda account: _message(actor, args, kwargs(account)))


DROP: Any = object()


def _batch(account: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"events": events}


CASES: tuple[Case, ...] = (
    # amount: wrong types
    single("amount-int", amount=3),
    single("amount-float", amount=1.5),
    single("amount-bool", amount=True),
    single("amount-null", amount=None),
    single("amount-list", amount=["1"]),
    single("amount-object", amount={"value": "1"}),
    # amount: numbers that are not money
    single("amount-nan", amount="NaN"),
    single("amount-infinity", amount="Infinity"),
    single("amount-minus-infinity", amount="-Infinity"),
    single("amount-1e400", amount="1e400"),
    single("amount-1e-400", amount="1e-400"),
    single("amount-negative", amount="-5"),
    single("amount-zero", amount="0"),
    single("amount-7-places", amount="0.0000001"),
    single("amount-7-places-large", amount="12.1234567"),
    single("amount-huge", amount="9" * 40),
    single("amount-padded", amount=" 1"),
    single("amount-comma", amount="1,5"),
    single("amount-hex", amount="0x10"),
    single("amount-empty", amount=""),
    single("amount-1mb", amount="1" * MEGABYTE),
    # currency and account
    single("currency-unknown", currency="ZZZ"),
    single("currency-other", currency="USD"),
    single("currency-lowercase", currency="eur"),
    single("currency-number", currency=978),
    single("account-unknown", account_id=f"ghost-{uuid.uuid4().hex}"),
    single("account-empty", account_id=""),
    single("account-null", account_id=None),
    single("account-1mb", account_id="a" * MEGABYTE),
    # event id
    single("event-id-missing", event_id=DROP),
    single("event-id-1mb", event_id="e" * MEGABYTE),
    single("event-id-number", event_id=12345),
    single("event-id-empty", event_id=""),
    single("event-id-nul", event_id=f"nul\x00{uuid.uuid4().hex}"),
    # time
    single("occurred-at-garbage", occurred_at="not a time"),
    single("occurred-at-naive", occurred_at="2026-01-01T00:00:00"),
    single("occurred-at-far-future", occurred_at="2100-01-01T00:00:00Z"),
    single("occurred-at-too-old", occurred_at="1999-12-31T23:59:59Z"),
    single("occurred-at-epoch-number", occurred_at=1764460800),
    # shape
    single("field-extra", surprise=True),
    single("kind-list", kind=["voice"]),
    single("kind-1mb", kind="k" * MEGABYTE),
    raw("no-fields", ACTOR_RECORD_USAGE, (), lambda account: {}),
    raw("positional-args", ACTOR_RECORD_USAGE, ("x", "y"), lambda account: {}),
    raw("positional-event", ACTOR_RECORD_USAGE, (None,), good_event),
    # batches
    raw("batch-not-a-list", ACTOR_RECORD_USAGE_BATCH, (), lambda account: {"events": "nope"}),
    raw("batch-empty", ACTOR_RECORD_USAGE_BATCH, (), lambda account: {"events": []}),
    raw(
        "batch-1001",
        ACTOR_RECORD_USAGE_BATCH,
        (),
        lambda account: _batch(account, [good_event(account) for _ in range(1001)]),
    ),
    raw(
        "batch-100000",
        ACTOR_RECORD_USAGE_BATCH,
        (),
        lambda account: _batch(account, [good_event(account) for _ in range(100_000)]),
    ),
    raw("batch-of-numbers", ACTOR_RECORD_USAGE_BATCH, (), lambda account: {"events": [1, 2]}),
    raw("batch-missing", ACTOR_RECORD_USAGE_BATCH, (), lambda account: {}),
    raw(
        "batch-extra-argument",
        ACTOR_RECORD_USAGE_BATCH,
        (),
        lambda account: {"events": [good_event(account)], "priority": "high"},
    ),
    Case(
        "batch-one-bad-event",
        lambda account: _message(
            ACTOR_RECORD_USAGE_BATCH,
            (),
            {"events": [good_event(account), good_event(account, amount=7.5), good_event(account)]},
        ),
        good_events=2,
    ),
)
