"""Decoding usage messages: every bad input becomes a rejection with a reason, never a raise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.usage.decode import decode_batch, decode_single, parse_event

GOOD: dict[str, Any] = {
    "event_id": "ev-1",
    "account_id": "acct-1",
    "amount": "1.250000",
    "currency": "USD",
    "occurred_at": "2026-11-26T10:00:00Z",
    "kind": "voice",
}


def with_(**changes: Any) -> dict[str, Any]:
    event = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            event.pop(key)
        else:
            event[key] = value
    return event


BAD_EVENTS: list[tuple[Any, str]] = [
    (with_(event_id=...), "missing field(s): event_id"),
    (with_(account_id=...), "missing field(s): account_id"),
    (with_(amount=...), "missing field(s): amount"),
    (with_(currency=...), "missing field(s): currency"),
    (with_(occurred_at=...), "missing field(s): occurred_at"),
    (with_(ammount="1"), "unknown field(s): ammount"),
    (with_(event_id=""), "event_id is empty"),
    (with_(event_id="x" * 201), "longer than 200"),
    (with_(event_id=42), "event_id must be a string"),
    (with_(event_id="a\x00b"), "NUL"),
    (with_(event_id="\ud800"), "lone surrogate"),
    (with_(account_id=None), "account_id must be a string"),
    (with_(amount=1.25), "decimal string, got a number"),
    (with_(amount=2), "decimal string, got a number"),
    (with_(amount="1.2345678"), "more than 6 decimal places"),
    (with_(amount="0"), "greater than zero"),
    (with_(amount="-5"), "positive"),
    (with_(amount="NaN"), "finite"),
    (with_(amount="Infinity"), "finite"),
    (with_(amount="1e2"), "look like"),
    (with_(amount="1000000000000000"), "too large"),
    (with_(currency="usd"), "3-letter"),
    (with_(currency="DOLLARS"), "3-letter"),
    (with_(occurred_at="yesterday"), "not an ISO 8601"),
    (with_(occurred_at="2026-11-26T10:00:00"), "no time zone"),
    (with_(occurred_at=1764151200), "must be an ISO 8601 string"),
    (with_(occurred_at="2999-01-01T00:00:00Z"), "in the future"),
    (with_(occurred_at="0001-01-01T00:00:00+14:00"), "before 2000"),
    (with_(kind=7), "kind must be a string"),
    (["not", "an", "object"], "event must be an object"),
    ("just text", "event must be an object"),
]


@pytest.mark.parametrize(("event", "reason"), BAD_EVENTS)
def test_each_bad_event_in_a_batch_is_rejected_alone(event: Any, reason: str) -> None:
    decoded = decode_batch((), {"events": [GOOD, event]}, message_id="m1", actor_name="b")
    assert [e.event_id for e in decoded.events] == ["ev-1"]
    assert len(decoded.rejections) == 1
    rejection = decoded.rejections[0]
    assert reason in rejection.reason and rejection.reason.startswith("events[1]: ")
    assert rejection.message_id == "m1" and rejection.payload == event


@pytest.mark.parametrize(("event", "reason"), [b for b in BAD_EVENTS if isinstance(b[0], dict)])
def test_each_bad_single_event_is_rejected_with_its_reason(event: Any, reason: str) -> None:
    decoded = decode_single((), event, message_id="m2", actor_name="record_usage")
    assert decoded.events == [] and reason in decoded.rejections[0].reason


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        ((GOOD,), {}, "positional arguments"),
        ((), {}, "exactly one keyword argument: events"),
        ((), {"events": [GOOD], "extra": 1}, "exactly one keyword argument"),
        ((), {"events": {"a": GOOD}}, "events must be a list"),
        ((), {"events": []}, "1 to 1000 events, got 0"),
        ((), {"events": [GOOD] * 1001}, "1 to 1000 events, got 1001"),
    ],
)
def test_malformed_batches_are_rejected_whole(args: Any, kwargs: Any, reason: str) -> None:
    decoded = decode_batch(args, kwargs, message_id="m3", actor_name="b")
    assert decoded.events == [] and len(decoded.rejections) == 1
    assert reason in decoded.rejections[0].reason


def test_positional_single_is_rejected() -> None:
    decoded = decode_single(("ev", "acct"), {}, message_id="m", actor_name="record_usage")
    assert "positional" in decoded.rejections[0].reason


def test_a_good_event_decodes_exactly() -> None:
    ev = parse_event(GOOD)
    assert ev.amount == Decimal("1.25") and ev.currency == "USD" and ev.kind == "voice"
    assert ev.occurred_at == datetime(2026, 11, 26, 10, tzinfo=UTC)


def test_fingerprint_is_stable_per_message_and_reason() -> None:
    a = decode_single((), with_(amount=1), message_id="m", actor_name="r").rejections[0]
    b = decode_single((), with_(amount=1), message_id="m", actor_name="r").rejections[0]
    c = decode_single((), with_(amount=1), message_id="other", actor_name="r").rejections[0]
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_slight_clock_skew_is_accepted() -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert parse_event(with_(occurred_at=soon)).occurred_at.tzinfo is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_no_input_makes_decoding_raise(kwargs: dict[str, Any]) -> None:
    single = decode_single((), kwargs, message_id="m", actor_name="record_usage")
    assert len(single.events) + len(single.rejections) == 1
    batch = decode_batch((), {"events": [kwargs]}, message_id="m", actor_name="b")
    assert len(batch.events) + len(batch.rejections) == 1
    for rejection in single.rejections + batch.rejections:
        assert rejection.reason and rejection.payload_json()


def test_rejections_store_unstorable_ids_escaped() -> None:
    bad = with_(event_id="nul\x00\ud800id", amount=1)
    rejection = decode_single((), bad, message_id="m", actor_name="r").rejections[0]
    assert rejection.event_id == "nul\\x00\\ud800id"
    rejection.event_id.encode("utf-8")
