"""What `rejected_usage` holds, exactly: the raw event as received, escaped where PostgreSQL text
cannot hold it, with its ids, its reason and its message. A payload stored as "null", or a lone
surrogate handed to PostgreSQL, must fail here."""

from __future__ import annotations

import uuid
from typing import Any

from common.usage.decode import decode_batch, decode_single
from common.usage.service import apply_submissions
from tests.support.factories import POLICY, create_account, new_id

STORED = (
    "SELECT fingerprint, message_id, actor_name, event_id, account_id, reason, payload "
    "FROM rejected_usage WHERE message_id = $1 ORDER BY id"
)


async def test_a_single_event_refused_at_debit_time_is_stored_with_its_raw_event(
    engine: Any, conn: Any
) -> None:
    """record_usage(**event) for an unknown account: the row is written by the debit, from the
    decoded item, so its payload is the raw event that decode_single kept (not "null")."""
    ghost, event_id, message_id = new_id("ghost"), new_id("ev"), uuid.uuid4().hex
    kwargs = {
        "event_id": event_id,
        "account_id": ghost,
        "amount": "1.50",
        "currency": "USD",
        "occurred_at": "2026-11-26T10:00:00+00:00",
        "kind": "voice",
    }
    sub = decode_single((), kwargs, message_id=message_id, actor_name="record_usage")
    [outcome] = await apply_submissions(engine, POLICY, [sub])
    reason = f"unknown account {ghost!r}"
    assert (outcome.applied, outcome.rejected) == (0, [reason])
    [row] = await conn.fetch(STORED, message_id)
    fingerprint = row["fingerprint"]
    assert len(fingerprint) == 64
    assert dict(row) == {
        "fingerprint": fingerprint,
        "message_id": message_id,
        "actor_name": "record_usage",
        "event_id": event_id,
        "account_id": ghost,
        "reason": reason,
        "payload": (
            f'{{"account_id": "{ghost}", "amount": "1.50", "currency": "USD", '
            f'"event_id": "{event_id}", "kind": "voice", '
            '"occurred_at": "2026-11-26T10:00:00+00:00"}'
        ),
    }


async def test_a_bad_single_event_is_stored_as_received(engine: Any, conn: Any) -> None:
    account, message_id = new_id(), uuid.uuid4().hex
    kwargs = {"event_id": "ev-num", "account_id": account, "amount": 1.5, "currency": "USD"}
    sub = decode_single((), kwargs, message_id=message_id, actor_name="record_usage")
    [rejection] = sub.rejections
    await apply_submissions(engine, POLICY, [sub])
    rows = [dict(r) for r in await conn.fetch(STORED, message_id)]
    assert rows == [
        {
            "fingerprint": rejection.fingerprint,
            "message_id": message_id,
            "actor_name": "record_usage",
            "event_id": "ev-num",
            "account_id": account,
            "reason": "missing field(s): occurred_at",
            "payload": (
                f'{{"account_id": "{account}", "amount": 1.5, "currency": "USD", '
                '"event_id": "ev-num"}'
            ),
        }
    ]


async def test_lone_surrogates_and_nuls_reach_postgresql_escaped(engine: Any, conn: Any) -> None:
    """PostgreSQL text refuses NUL and lone surrogates: ids are kept with backslash escapes and
    the payload as ASCII JSON (\\ud800, \\u0000), so the whole message is kept, and the valid
    event of the batch is still applied."""
    account, message_id = new_id(), uuid.uuid4().hex
    await create_account(conn, account, balance="5")

    def event(event_id: str, account_id: str = account) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "account_id": account_id,
            "amount": "1",
            "currency": "USD",
            "occurred_at": "2026-11-26T10:00:00+00:00",
            "kind": "caf\u00e9",
        }

    surrogate = event("ev-\ud800")
    nul = event("ev-nul", account_id=f"{account}\x00")
    good = event(new_id("ev"))
    sub = decode_batch(
        (), {"events": [surrogate, nul, good]}, message_id=message_id, actor_name="batch"
    )
    [outcome] = await apply_submissions(engine, POLICY, [sub])
    assert outcome.applied == 1
    rows = [dict(r) for r in await conn.fetch(STORED, message_id)]
    for row in rows:
        assert len(row.pop("fingerprint")) == 64
    assert rows == [
        {
            "message_id": message_id,
            "actor_name": "batch",
            "event_id": "ev-\\ud800",
            "account_id": account,
            "reason": "events[0]: event_id is not valid Unicode text (lone surrogate)",
            "payload": (
                f'{{"account_id": "{account}", "amount": "1", "currency": "USD", '
                '"event_id": "ev-\\ud800", "kind": "caf\\u00e9", '
                '"occurred_at": "2026-11-26T10:00:00+00:00"}'
            ),
        },
        {
            "message_id": message_id,
            "actor_name": "batch",
            "event_id": "ev-nul",
            "account_id": f"{account}\\x00",
            "reason": "events[1]: account_id contains a NUL character",
            "payload": (
                f'{{"account_id": "{account}\\u0000", "amount": "1", "currency": "USD", '
                '"event_id": "ev-nul", "kind": "caf\\u00e9", '
                '"occurred_at": "2026-11-26T10:00:00+00:00"}'
            ),
        },
    ]
