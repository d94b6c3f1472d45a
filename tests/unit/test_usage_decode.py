"""Decoding usage messages: every bad input becomes a rejection with a reason, never a raise."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.money import MoneyError, parse_amount, parse_currency
from common.usage import decode
from common.usage.decode import (
    Incoming,
    Rejection,
    Submission,
    UsageError,
    UsageEvent,
    decode_batch,
    decode_single,
    parse_event,
)

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


# --- Whole values: every field of what the decoders return, every limit on both sides. -------

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
OCCURRED = datetime(2026, 11, 26, 10, tzinfo=UTC)  # GOOD's occurred_at


def usage(**changes: Any) -> UsageEvent:
    """The UsageEvent that GOOD, with `changes`, decodes to."""
    fields: dict[str, Any] = {
        "event_id": "ev-1",
        "account_id": "acct-1",
        "amount": Decimal("1.25"),
        "currency": "USD",
        "occurred_at": OCCURRED,
        "kind": "voice",
    }
    fields.update(changes)
    return UsageEvent(**fields)


def money_reason(parse: Any, value: Any) -> str:
    """The reason common.money gives for `value` (its wording is test_money's business)."""
    with pytest.raises(MoneyError) as caught:
        parse(value)
    return str(caught.value)


def kept_ids(event: Any) -> tuple[str | None, str | None]:
    """What a rejection keeps of an event's ids: strings, cut to the documented 200 characters."""
    if not isinstance(event, dict):
        return None, None
    ids = event.get("event_id"), event.get("account_id")
    return tuple(v[:200] if isinstance(v, str) else None for v in ids)  # type: ignore[return-value]


EXACT_REASONS: list[tuple[Any, str]] = [
    (with_(event_id=...), "missing field(s): event_id"),
    (with_(amount=..., currency=...), "missing field(s): amount, currency"),
    (with_(amount=..., ammount="1"), "missing field(s): amount"),
    (with_(ammount="1"), "unknown field(s): ammount"),
    (with_(zeta=1, alpha=2), "unknown field(s): alpha, zeta"),
    (with_(event_id=""), "event_id is empty"),
    (with_(event_id=" \t"), "event_id is empty"),
    (with_(event_id="x" * 201), "event_id is longer than 200 characters"),
    (with_(event_id=42), "event_id must be a string, got int"),
    (with_(event_id="a\x00b"), "event_id contains a NUL character"),
    (with_(event_id="\ud800"), "event_id is not valid Unicode text (lone surrogate)"),
    (with_(account_id=None), "account_id must be a string, got NoneType"),
    (with_(account_id="a" * 201), "account_id is longer than 200 characters"),
    (with_(account_id="caf\u00e9\udfff"), "account_id is not valid Unicode text (lone surrogate)"),
    (with_(amount=1.25), money_reason(parse_amount, 1.25)),
    (with_(amount="1e2"), money_reason(parse_amount, "1e2")),
    (with_(amount="0"), money_reason(parse_amount, "0")),
    (with_(currency="usd"), money_reason(parse_currency, "usd")),
    (with_(occurred_at="yesterday"), "occurred_at is not an ISO 8601 timestamp: 'yesterday'"),
    (with_(occurred_at="2026-11-26T10:00:00"), "occurred_at has no time zone (add Z or +00:00)"),
    (with_(occurred_at=1764151200), "occurred_at must be an ISO 8601 string, got int"),
    (
        with_(occurred_at="2999-01-01T00:00:00Z"),
        "occurred_at is more than a day in the future: '2999-01-01T00:00:00Z'",
    ),
    (
        with_(occurred_at="0001-01-01T00:00:00+14:00"),
        "occurred_at is before 2000: '0001-01-01T00:00:00+14:00'",
    ),
    (with_(kind=7), "kind must be a string, got int"),
    (with_(kind=""), "kind is empty"),
    (with_(kind="k" * 65), "kind is longer than 64 characters"),
    (["not", "an", "object"], "event must be an object, got list"),
    ("just text", "event must be an object, got str"),
]


@pytest.mark.parametrize(("event", "reason"), [e for e in EXACT_REASONS if isinstance(e[0], dict)])
def test_a_bad_single_event_is_one_whole_rejection(event: Any, reason: str) -> None:
    decoded = decode_single((), event, message_id="m2", actor_name="record_usage")
    rejection = Rejection(reason, event, "m2", "record_usage", *kept_ids(event))
    assert decoded == Submission("m2", items=[], rejections=[rejection])


@pytest.mark.parametrize(("event", "reason"), EXACT_REASONS)
def test_a_bad_event_in_a_batch_is_one_whole_rejection(event: Any, reason: str) -> None:
    decoded = decode_batch((), {"events": [GOOD, event]}, message_id="m1", actor_name="b")
    rejection = Rejection(f"events[1]: {reason}", event, "m1", "b", *kept_ids(event))
    assert decoded == Submission(
        "m1", items=[Incoming(usage(), "m1", "b", GOOD)], rejections=[rejection]
    )


def test_a_rejection_keeps_the_ids_of_the_event_cut_to_200_characters() -> None:
    long_id, long_account = "e" * 250, "a" * 300
    event = with_(event_id=long_id, account_id=long_account)
    [rejection] = decode_single((), event, message_id="m", actor_name="r").rejections
    assert (rejection.event_id, rejection.account_id) == ("e" * 200, "a" * 200)
    [rejection] = decode_single((), with_(amount=1), message_id="m", actor_name="r").rejections
    assert (rejection.event_id, rejection.account_id) == ("ev-1", "acct-1")


def test_a_good_single_event_decodes_whole_with_its_raw_event() -> None:
    """The raw event travels with it: a debit-time rejection (unknown account) stores it."""
    kwargs = dict(GOOD)
    decoded = decode_single((), kwargs, message_id="m1", actor_name="record_usage")
    assert decoded == Submission(
        "m1", items=[Incoming(usage(), "m1", "record_usage", GOOD)], rejections=[]
    )
    assert decoded.items[0].raw is kwargs


def test_a_good_batch_decodes_whole_with_each_raw_event() -> None:
    other = with_(event_id="ev-2", account_id="acct-2", amount="3", kind=...)
    decoded = decode_batch((), {"events": [GOOD, other]}, message_id="m", actor_name="b")
    expected = usage(event_id="ev-2", account_id="acct-2", amount=Decimal(3), kind=None)
    assert decoded == Submission(
        "m",
        items=[Incoming(usage(), "m", "b", GOOD), Incoming(expected, "m", "b", other)],
        rejections=[],
    )


def test_kind_is_optional() -> None:
    no_kind = with_(kind=...)
    assert parse_event(no_kind, now=NOW) == usage(kind=None)
    assert parse_event(with_(kind=None), now=NOW) == usage(kind=None)
    single = decode_single((), no_kind, message_id="m", actor_name="record_usage")
    assert single == Submission(
        "m", items=[Incoming(usage(kind=None), "m", "record_usage", no_kind)]
    )
    batch = decode_batch((), {"events": [no_kind]}, message_id="m", actor_name="b")
    assert batch == Submission("m", items=[Incoming(usage(kind=None), "m", "b", no_kind)])


@pytest.mark.parametrize(("field", "limit"), [("event_id", 200), ("account_id", 200), ("kind", 64)])
def test_text_limits_on_both_sides(field: str, limit: int) -> None:
    at_limit = "x" * limit
    assert parse_event(with_(**{field: at_limit}), now=NOW) == usage(**{field: at_limit})
    with pytest.raises(UsageError) as caught:
        parse_event(with_(**{field: at_limit + "x"}), now=NOW)
    assert str(caught.value) == f"{field} is longer than {limit} characters"


@pytest.mark.parametrize(
    ("occurred_at", "parsed"),
    [
        ("2000-01-01T00:00:00Z", datetime(2000, 1, 1, tzinfo=UTC)),
        ("2000-01-01T01:00:00+01:00", datetime(2000, 1, 1, tzinfo=UTC)),
        ("2026-11-27T12:00:00Z", NOW + timedelta(days=1)),
        ("2026-11-27T13:00:00+01:00", NOW + timedelta(days=1)),
    ],
)
def test_occurred_at_bounds_are_accepted(occurred_at: str, parsed: datetime) -> None:
    assert parse_event(with_(occurred_at=occurred_at), now=NOW) == usage(occurred_at=parsed)


@pytest.mark.parametrize(
    ("occurred_at", "reason"),
    [
        ("1999-12-31T23:59:59.999999Z", "before 2000"),
        ("2000-01-01T00:59:59.999999+01:00", "before 2000"),
        ("2000-01-01T00:00:00+00:01", "before 2000"),
        ("2026-11-27T12:00:00.000001Z", "more than a day in the future"),
        ("2026-11-27T12:00:00.000001+00:00", "more than a day in the future"),
        ("2026-11-27T11:00:00.000001-01:00", "more than a day in the future"),
    ],
)
def test_occurred_at_just_outside_the_bounds_is_refused(occurred_at: str, reason: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_event(with_(occurred_at=occurred_at), now=NOW)
    assert str(caught.value) == f"occurred_at is {reason}: {occurred_at!r}"


@pytest.mark.parametrize("currency", ["ZAR", "CZK", "AZN", "ZZZ"])
def test_currencies_with_a_z_are_accepted(currency: str) -> None:
    assert parse_event(with_(currency=currency), now=NOW) == usage(currency=currency)


@pytest.mark.parametrize("size", [1, 1000])
def test_batches_of_1_and_of_1000_events_are_applied(size: int) -> None:
    events = [with_(event_id=f"ev-{i}") for i in range(size)]
    decoded = decode_batch((), {"events": events}, message_id="m", actor_name="b")
    assert decoded.rejections == []
    assert decoded.items == [
        Incoming(usage(event_id=f"ev-{i}"), "m", "b", e) for i, e in enumerate(events)
    ]


@pytest.mark.parametrize(
    ("args", "kwargs", "payload", "reason"),
    [
        (
            (GOOD,),
            {},
            {"args": [GOOD], "kwargs": {}},
            "positional arguments are not accepted; send events=[...]",
        ),
        (
            (GOOD,),
            {"events": [GOOD]},
            {"args": [GOOD], "kwargs": {"events": [GOOD]}},
            "positional arguments are not accepted; send events=[...]",
        ),
        ((), {}, {}, "record_usage_batch takes exactly one keyword argument: events"),
        (
            (),
            {"events": [GOOD], "extra": 1},
            {"events": [GOOD], "extra": 1},
            "record_usage_batch takes exactly one keyword argument: events",
        ),
        ((), {"events": {"a": GOOD}}, {"events": {"a": GOOD}}, "events must be a list, got dict"),
        ((), {"events": "ev"}, {"events": "ev"}, "events must be a list, got str"),
        ((), {"events": []}, {"events": []}, "events must hold 1 to 1000 events, got 0"),
        (
            (),
            {"events": [GOOD] * 1001},
            {"events": [GOOD] * 1001},
            "events must hold 1 to 1000 events, got 1001",
        ),
    ],
)
def test_a_malformed_batch_is_one_whole_rejection(
    args: Any, kwargs: Any, payload: Any, reason: str
) -> None:
    decoded = decode_batch(args, kwargs, message_id="m3", actor_name="record_usage_batch")
    rejection = Rejection(reason, payload, "m3", "record_usage_batch")
    assert decoded == Submission("m3", items=[], rejections=[rejection])
    assert (rejection.event_id, rejection.account_id) == (None, None)


def test_positional_single_is_one_whole_rejection_with_the_keyword_ids() -> None:
    kwargs = {"event_id": "ev-9", "account_id": "acct-9"}
    decoded = decode_single(("ev", "acct"), kwargs, message_id="m", actor_name="record_usage")
    payload = {"args": ["ev", "acct"], "kwargs": {"event_id": "ev-9", "account_id": "acct-9"}}
    reason = "positional arguments are not accepted; send keyword arguments"
    rejection = Rejection(reason, payload, "m", "record_usage", "ev-9", "acct-9")
    assert decoded == Submission("m", items=[], rejections=[rejection])
    assert (decoded.size, decoded.events) == (1, [])


def test_a_batch_is_judged_against_one_reading_of_the_clock(monkeypatch: Any) -> None:
    """Every event of a batch is checked against the same `now`, read once per message."""
    readings = iter(NOW + timedelta(hours=h) for h in range(100))

    class Clock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return next(readings)

    monkeypatch.setattr(decode, "datetime", Clock)
    stamp = (NOW + timedelta(days=1, minutes=30)).isoformat()
    late = with_(occurred_at=stamp)
    decoded = decode_batch((), {"events": [late, late]}, message_id="m", actor_name="b")
    reason = f"occurred_at is more than a day in the future: {stamp!r}"
    assert [r.reason for r in decoded.rejections] == [
        f"events[0]: {reason}",
        f"events[1]: {reason}",
    ]
    assert decoded.items == []


def test_payload_json_is_sorted_ascii_and_never_raises() -> None:
    payload = {"z": "caf\u00e9 \ud800 \x00", "a": [1, None, True], "m": Decimal("1.5")}
    rejection = Rejection("r", payload)
    expected = '{"a": [1, null, true], "m": "Decimal(\'1.5\')", "z": "caf\\u00e9 \\ud800 \\u0000"}'
    assert rejection.payload_json() == expected
    assert Rejection("r", None).payload_json() == "null"


def test_the_fingerprint_is_pinned() -> None:
    """Stored fingerprints deduplicate redelivered rejections: the same rejection must hash the
    same across releases. sha256 of the ASCII JSON of [actor, message id, reason, payload]."""
    rejection = Rejection(
        "montant refus\u00e9: \u00e9",
        {"z": "caf\u00e9", "a": [1, None]},
        "msg-\u00e9",
        "record_usage",
        "ev-\u00e9",
        "acct-\u00e9",
    )
    canonical = json.dumps(
        ["record_usage", "msg-\u00e9", "montant refus\u00e9: \u00e9", rejection.payload_json()],
        ensure_ascii=True,
    )
    assert rejection.fingerprint == hashlib.sha256(canonical.encode()).hexdigest()
    assert rejection.fingerprint == (
        "c04f5fe51f2b5e6ff8f5a8278c3b84344dd86d362ad9c541d61b8b920d2ed7fd"
    )
    surrogate = Rejection("r", {}, "m\ud800", "a\udfff")  # never raises, even on such ids
    assert (
        surrogate.fingerprint == hashlib.sha256(b'["a\\udfff", "m\\ud800", "r", "{}"]').hexdigest()
    )
