"""POST /v1/usage in process: decoded by the balance worker's decoder, enqueued as the message
the upstream would publish, or refused whole with each event's reason (nothing enqueued)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import dramatiq
import httpx
import pytest
import redis

from common.names import ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH, QUEUE_USAGE
from common.usage.decode import decode_single
from config.settings import Settings
from tests.integration.web.conftest import bearer
from tests.support.factories import event, new_id


@pytest.fixture
def queued(test_settings: Settings, namespace: str) -> Iterator[Any]:
    """The messages waiting on this test's queue `usage`, decoded."""
    client = redis.Redis.from_url(test_settings.redis_url)

    def messages() -> list[dramatiq.Message[Any]]:
        ids = client.lrange(f"{namespace}:{QUEUE_USAGE}", 0, -1)
        raw = client.hmget(f"{namespace}:{QUEUE_USAGE}.msgs", ids) if ids else []
        return [dramatiq.Message.decode(r) for r in raw if isinstance(r, bytes)]

    yield messages
    keys = list(client.scan_iter(match=f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


async def post(api: httpx.AsyncClient, token: str, body: Any, **kwargs: Any) -> httpx.Response:
    return await api.post("/v1/usage", json=body, headers=bearer(token), **kwargs)


async def test_one_event_is_enqueued_as_record_usage(
    api: httpx.AsyncClient, token: str, queued: Any
) -> None:
    ev = event(new_id(), "1.25")
    response = await post(api, token, ev)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 1
    (message,) = queued()
    assert message.message_id == body["message_id"]
    assert (message.queue_name, message.actor_name) == (QUEUE_USAGE, ACTOR_RECORD_USAGE)
    assert message.args == () and message.kwargs == ev


async def test_a_batch_is_enqueued_as_one_record_usage_batch(
    api: httpx.AsyncClient, token: str, queued: Any
) -> None:
    acct = new_id()
    events = [event(acct, "0.013007") for _ in range(1000)]
    response = await post(api, token, {"events": events})
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1000
    (message,) = queued()
    assert message.actor_name == ACTOR_RECORD_USAGE_BATCH
    assert message.kwargs == {"events": events}


async def test_a_batch_with_one_bad_event_is_refused_whole(
    api: httpx.AsyncClient, token: str, queued: Any
) -> None:
    acct = new_id()
    events = [event(acct) for _ in range(5)]
    events[3]["amount"] = 1.5
    response = await post(api, token, {"events": events})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_usage"
    assert error["message"] == "1 of 5 events refused; nothing was enqueued"
    assert error["details"] == [
        {
            "reason": "events[3]: amount must be a decimal string, got a number",
            "index": 3,
            "event_id": events[3]["event_id"],
        }
    ]
    assert queued() == []


def worker_reason(kwargs: dict[str, Any]) -> str:
    """What the balance worker would keep in rejected_usage for this message."""
    (rejection,) = decode_single(
        (), kwargs, message_id="m", actor_name=ACTOR_RECORD_USAGE
    ).rejections
    return rejection.reason


@pytest.mark.parametrize(
    ("raw_amount", "reason"),
    [
        ("1.5", "amount must be a decimal string, got a number"),
        ("3", "amount must be a decimal string, got a number"),
        ("1e400", "amount must be a decimal string, got a number"),
        ("123456789012345678901234567890", "amount must be a decimal string, got a number"),
        ("NaN", "amount must be a decimal string, got a number"),
        ('"0"', "amount must be greater than zero"),
        ('"1.0000001"', "amount has more than 6 decimal places: '1.0000001'"),
        ('"-2"', "amount must be positive, got '-2'"),
        ('"1e3"', "amount must look like 12.345678 (digits, optional point), got '1e3'"),
    ],
)
async def test_amounts_are_refused_exactly_as_the_worker_refuses_them(
    api: httpx.AsyncClient, token: str, queued: Any, raw_amount: str, reason: str
) -> None:
    """The body is sent as text: a JSON number stays a number until the decoder sees it."""
    ev = event(new_id())
    text = json.dumps(ev).replace(json.dumps(ev["amount"]), raw_amount)
    response = await api.post(
        "/v1/usage",
        content=text.encode(),
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    (detail,) = response.json()["error"]["details"]
    assert detail["reason"] == reason == worker_reason(json.loads(text))
    assert queued() == []


@pytest.mark.parametrize(
    ("change", "reason_start"),
    [
        ({"currency": "usd"}, "currency must be a 3-letter ISO 4217 code"),
        ({"occurred_at": "2026-01-01T00:00:00"}, "occurred_at has no time zone"),
        ({"occurred_at": "1999-12-31T23:59:59Z"}, "occurred_at is before 2000"),
        ({"event_id": ""}, "event_id is empty"),
        ({"event_id": "e" * 201}, "event_id is longer than 200 characters"),
        ({"event_id": "a\x00b"}, "event_id contains a NUL character"),
        ({"event_id": "\ud800"}, "event_id is not valid Unicode text (lone surrogate)"),
        ({"extra": 1}, "unknown field(s): extra"),
        ({"kind": ["voice"]}, "kind must be a string, got list"),
    ],
)
async def test_every_rule_is_the_decoders(
    api: httpx.AsyncClient,
    token: str,
    queued: Any,
    change: dict[str, Any],
    reason_start: str,
) -> None:
    ev = event(new_id()) | change
    text = json.dumps(ev)  # ensure_ascii: a lone surrogate travels as its \\ud800 escape
    response = await api.post(
        "/v1/usage",
        content=text.encode(),
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert message.startswith(reason_start) and message.endswith("; nothing was enqueued")
    assert queued() == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"events": []}, "events must hold 1 to 1000 events, got 0"),
        ({"events": "nope"}, "events must be a list, got str"),
        ({"events": [{}], "x": 1}, "record_usage_batch takes exactly one keyword argument: events"),
    ],
)
async def test_batch_level_faults_are_the_decoders(
    api: httpx.AsyncClient, token: str, queued: Any, body: Any, reason: str
) -> None:
    response = await post(api, token, body)
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [{"reason": reason}]
    assert queued() == []


async def test_more_than_1000_events_is_422(
    api: httpx.AsyncClient, token: str, queued: Any
) -> None:
    acct = new_id()
    ev = event(acct)
    small = {k: ev[k] for k in ("account_id", "amount", "currency", "occurred_at")}
    body = {"events": [{**small, "event_id": str(i)} for i in range(1001)]}
    response = await post(api, token, body)
    assert response.status_code == 422, response.text
    assert "got 1001" in response.json()["error"]["message"]
    assert queued() == []


@pytest.mark.parametrize("body", [[], [{}], "text", 3, None, True])
async def test_a_body_that_is_not_an_object_is_422(
    api: httpx.AsyncClient, token: str, queued: Any, body: Any
) -> None:
    response = await api.post(
        "/v1/usage",
        content=json.dumps(body).encode(),
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_usage"
    assert queued() == []


@pytest.mark.parametrize(
    "content",
    [b"", b"   ", b"{", b'{"a": }', b"\xff\xfe{}", b"[" * 100_000, b"1" * 5000, b"\xef\xbb\xbf{}"],
)
async def test_malformed_json_is_400(
    api: httpx.AsyncClient, token: str, queued: Any, content: bytes
) -> None:
    response = await api.post(
        "/v1/usage", content=content, headers={**bearer(token), "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "malformed_json"
    assert queued() == []


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
async def test_a_body_that_is_not_json_is_415(
    api: httpx.AsyncClient, token: str, queued: Any, content_type: str | None
) -> None:
    headers = bearer(token)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await api.post(
        "/v1/usage", content=json.dumps(event(new_id())).encode(), headers=headers
    )
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert queued() == []


async def test_a_charset_of_utf_8_is_fine(api: httpx.AsyncClient, token: str) -> None:
    response = await api.post(
        "/v1/usage",
        content=json.dumps(event(new_id())).encode(),
        headers={**bearer(token), "Content-Type": "Application/JSON; charset=UTF-8"},
    )
    assert response.status_code == 202, response.text


async def test_a_huge_body_is_413_before_it_is_read(
    api: httpx.AsyncClient, token: str, queued: Any
) -> None:
    big = b"{" + b" " * (300 * 1024) + b"}"  # the fixture's limit is 256 KiB
    response = await api.post(
        "/v1/usage", content=big, headers={**bearer(token), "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert queued() == []


async def test_a_huge_body_without_a_length_is_cut_at_the_limit(
    api: httpx.AsyncClient, token: str, queued: Any
) -> None:
    async def chunks() -> Any:
        for _ in range(100):
            yield b" " * 8192

    response = await api.post(
        "/v1/usage",
        content=chunks(),
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert queued() == []


async def test_request_ids_are_kept_when_sane_and_made_otherwise(
    api: httpx.AsyncClient, token: str
) -> None:
    sane = "upstream-7f3a.2:retry-1"
    got = await api.get("/healthz", headers={"X-Request-Id": sane})
    assert got.headers["X-Request-Id"] == sane
    for insane in ("a b", "x" * 129, "<script>", ""):
        got = await api.get("/healthz", headers={"X-Request-Id": insane})
        made = got.headers["X-Request-Id"]
        assert made != insane and len(made) == 32
