"""Decoding usage messages into events, or into rejections that say why.

Nothing here raises for bad input: input that will never become valid is turned into a
`Rejection` kept in `rejected_usage`, so dramatiq's retry loop only ever sees real faults
(database down, broker down).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from common.money import MoneyError, parse_amount, parse_currency

MAX_EVENT_ID_CHARS: Final = 200
MAX_ACCOUNT_ID_CHARS: Final = 200
MAX_KIND_CHARS: Final = 64
MAX_BATCH_EVENTS: Final = 1000
# Upstream clocks drift; an event stamped further ahead than this is a bug upstream.
MAX_FUTURE_SKEW: Final = timedelta(days=1)
OLDEST_OCCURRED_AT: Final = datetime(2000, 1, 1, tzinfo=UTC)
REQUIRED_FIELDS: Final = frozenset({"event_id", "account_id", "amount", "currency", "occurred_at"})
KNOWN_FIELDS: Final = REQUIRED_FIELDS | {"kind"}


# Not frozen: one is built per event on the hot path, and a frozen dataclass's __init__ (one
# object.__setattr__ per field) costs several times a plain one. Nothing mutates it.
@dataclass(slots=True)
class UsageEvent:
    event_id: str
    account_id: str
    amount: Decimal
    currency: str
    occurred_at: datetime
    kind: str | None


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    payload: Any
    message_id: str | None = None
    actor_name: str | None = None
    event_id: str | None = None
    account_id: str | None = None
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        # Kept for inspection even when the ids themselves are what is wrong with the event:
        # PostgreSQL text refuses NUL and lone surrogates, so those are stored escaped.
        for name in ("event_id", "account_id", "reason"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, storable_text(value))
        digest = hashlib.sha256(
            json.dumps(
                [self.actor_name, self.message_id, self.reason, self.payload_json()],
                ensure_ascii=True,
            ).encode()
        ).hexdigest()
        object.__setattr__(self, "fingerprint", digest)

    def payload_json(self) -> str:
        # ensure_ascii keeps lone surrogates and NULs as escapes PostgreSQL text accepts.
        return json.dumps(self.payload, ensure_ascii=True, sort_keys=True, default=repr)


def storable_text(value: str) -> str:
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


class UsageError(ValueError):
    pass


def _text(obj: dict[str, Any], name: str, max_chars: int) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string, got {type(value).__name__}")
    if not value or value.isspace():
        raise UsageError(f"{name} is empty")
    if len(value) > max_chars:
        raise UsageError(f"{name} is longer than {max_chars} characters")
    if "\x00" in value:
        raise UsageError(f"{name} contains a NUL character")
    if not value.isascii():  # ASCII (the usual id) cannot hold a lone surrogate
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{name} is not valid Unicode text (lone surrogate)") from None
    return value


def _timestamp(value: object, now: datetime) -> datetime:
    if not isinstance(value, str):
        raise UsageError(f"occurred_at must be an ISO 8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"occurred_at is not an ISO 8601 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        raise UsageError("occurred_at has no time zone (add Z or +00:00)")
    if parsed < OLDEST_OCCURRED_AT:
        raise UsageError(f"occurred_at is before 2000: {value!r}")
    if parsed > now + MAX_FUTURE_SKEW:
        raise UsageError(f"occurred_at is more than a day in the future: {value!r}")
    return parsed


def parse_event(obj: object, *, now: datetime | None = None) -> UsageEvent:
    """Validate one usage event object; raise UsageError with a one-line reason."""
    if not isinstance(obj, dict):
        raise UsageError(f"event must be an object, got {type(obj).__name__}")
    keys = obj.keys()
    if not (keys >= REQUIRED_FIELDS and keys <= KNOWN_FIELDS):
        missing = sorted(REQUIRED_FIELDS - keys)
        if missing:
            raise UsageError(f"missing field(s): {', '.join(missing)}")
        unknown = sorted(str(k) for k in keys - KNOWN_FIELDS)
        raise UsageError(f"unknown field(s): {', '.join(unknown)}")
    event_id = _text(obj, "event_id", MAX_EVENT_ID_CHARS)
    account_id = _text(obj, "account_id", MAX_ACCOUNT_ID_CHARS)
    try:
        amount = parse_amount(obj["amount"])
        currency = parse_currency(obj["currency"])
    except MoneyError as exc:
        raise UsageError(str(exc)) from None
    occurred_at = _timestamp(obj["occurred_at"], now or datetime.now(UTC))
    kind = obj.get("kind")
    if kind is not None:
        kind = _text(obj, "kind", MAX_KIND_CHARS)
    return UsageEvent(event_id, account_id, amount, currency, occurred_at, kind)


def _ids(obj: object) -> tuple[str | None, str | None]:
    if not isinstance(obj, dict):
        return None, None
    event_id, account_id = obj.get("event_id"), obj.get("account_id")
    return (
        event_id[:MAX_EVENT_ID_CHARS] if isinstance(event_id, str) else None,
        account_id[:MAX_ACCOUNT_ID_CHARS] if isinstance(account_id, str) else None,
    )


@dataclass(slots=True)  # not frozen: built per event on the hot path (see UsageEvent)
class Incoming:
    """An event and where it came from (kept with it if it is rejected later)."""

    event: UsageEvent
    message_id: str | None
    actor_name: str
    raw: Any  # the event object as received


@dataclass(slots=True)
class Submission:
    """What one usage message asks for: its valid events and its rejections. The decoders below
    are its only constructors; the balance worker hands it to the service as is."""

    message_id: str | None
    items: list[Incoming] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.items) + len(self.rejections)

    @property
    def events(self) -> list[UsageEvent]:
        return [i.event for i in self.items]


def decode_single(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, message_id: str | None, actor_name: str
) -> Submission:
    """`record_usage(**event)`: one event in keyword arguments."""
    payload: Any = {"args": list(args), "kwargs": kwargs} if args else kwargs
    if args:
        reason = "positional arguments are not accepted; send keyword arguments"
        return Submission(
            message_id, rejections=[_reject(reason, payload, message_id, actor_name, kwargs)]
        )
    try:
        event = parse_event(kwargs)
    except UsageError as exc:
        return Submission(
            message_id, rejections=[_reject(str(exc), payload, message_id, actor_name, kwargs)]
        )
    return Submission(message_id, items=[Incoming(event, message_id, actor_name, kwargs)])


def decode_batch(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, message_id: str | None, actor_name: str
) -> Submission:
    """`record_usage_batch(events=[...])`: each bad event rejected alone, the rest applied."""
    payload: Any = {"args": list(args), "kwargs": kwargs} if args else kwargs
    events = kwargs.get("events")
    reason: str | None = None
    if args:
        reason = "positional arguments are not accepted; send events=[...]"
    elif set(kwargs) != {"events"}:
        reason = "record_usage_batch takes exactly one keyword argument: events"
    elif not isinstance(events, list):
        reason = f"events must be a list, got {type(events).__name__}"
    elif not 1 <= len(events) <= MAX_BATCH_EVENTS:
        reason = f"events must hold 1 to {MAX_BATCH_EVENTS} events, got {len(events)}"
    if reason is not None:
        return Submission(
            message_id, rejections=[Rejection(reason, payload, message_id, actor_name)]
        )
    assert isinstance(events, list)
    sub = Submission(message_id)
    now = datetime.now(UTC)
    for index, obj in enumerate(events):
        try:
            sub.items.append(Incoming(parse_event(obj, now=now), message_id, actor_name, obj))
        except UsageError as exc:
            sub.rejections.append(
                _reject(f"events[{index}]: {exc}", obj, message_id, actor_name, obj)
            )
    return sub


def _reject(
    reason: str, payload: Any, message_id: str | None, actor_name: str, source: object
) -> Rejection:
    event_id, account_id = _ids(source)
    return Rejection(reason, payload, message_id, actor_name, event_id, account_id)
