"""The web process's pure parts: request ids, body reading, the usage request's verdict, the
error envelope, the OpenAPI document, and how uvicorn is configured. No service needed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from common.names import ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH
from config.settings import AccessLog, Settings, WebSettings, settings_problem
from tests.support.factories import event
from web import middleware as web_middleware
from web.__main__ import base_url, uvicorn_config
from web.api.usage import decode_request, refusal
from web.app import create_app
from web.body import check_media_type, parse_json, read_limited
from web.errors import ApiError
from web.middleware import RequestContext, content_length, request_id_from

# --- request envelope ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (b"abc-123", True),
        (b"A.b_c:d-e", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"", False),
        (b"a b", False),
        (b"a\nb", False),
        (b"<script>", False),
        ("é".encode(), False),
    ],
)
def test_request_ids(given: bytes, kept: bool) -> None:
    made = request_id_from([(b"x-request-id", given)])
    assert (made == given.decode(errors="replace")) is kept
    if not kept:
        assert len(made) == 32 and int(made, 16) >= 0


def test_a_request_id_is_made_when_none_is_sent() -> None:
    assert request_id_from([]) != request_id_from([])


@pytest.mark.parametrize(
    ("value", "length"),
    [(b"0", 0), (b"123", 123), (b"-1", -1), (b"abc", -1), (b"1" * 19, -1), (b"", -1)],
)
def test_content_length(value: bytes, length: int) -> None:
    assert content_length([(b"content-length", value)]) == length
    assert content_length([]) is None


async def _raises(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("boom: a bug")


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def call(
    app: Any, access_log: AccessLog = AccessLog.ALL, slow_request_ms: float = 250, **kwargs: Any
) -> httpx.Response:
    wrapped = RequestContext(
        app, max_body_bytes=1000, access_log=access_log, slow_request_ms=slow_request_ms
    )
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post("/x", **kwargs)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize(
    ("mode", "slow_request_ms", "logged"),
    [
        (AccessLog.ALL, 250, {"/ok", "/missing"}),
        (AccessLog.ERRORS, 250, {"/missing"}),
        (AccessLog.ERRORS, 0, {"/ok", "/missing"}),  # every request is "slow"
        (AccessLog.OFF, 0, set()),
    ],
)
async def test_which_requests_get_an_access_line(
    mode: AccessLog,
    slow_request_ms: float,
    logged: set[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def route(scope: Scope, receive: Receive, send: Send) -> Any:
        return (_ok if scope["path"] == "/ok" else _not_found)(scope, receive, send)

    lines: list[dict[str, Any]] = []

    class Recorder:
        def info(self, event: str, **fields: Any) -> None:
            lines.append({"event": event, **fields})

    # structlog caches a module's logger at first use: record what the middleware sends it.
    monkeypatch.setattr(web_middleware, "log", Recorder())
    for path in ("/ok", "/missing"):
        wrapped = RequestContext(
            route, max_body_bytes=1000, access_log=mode, slow_request_ms=slow_request_ms
        )
        transport = httpx.ASGITransport(app=wrapped)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get(path)
    assert {line["path"] for line in lines if line["event"] == "http.request"} == logged


async def test_an_unexpected_error_is_a_json_500_with_the_request_id() -> None:
    response = await call(_raises, headers={"X-Request-Id": "req-1"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal",
            "message": "internal error; the request id identifies it in logs",
        }
    }
    assert response.headers["X-Request-Id"] == "req-1"
    assert "boom" not in response.text


async def test_a_declared_length_over_the_limit_is_413_unread() -> None:
    response = await call(_ok, content=b"x" * 1001)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert (await call(_ok, content=b"x" * 1000)).status_code == 204


async def test_a_length_that_is_not_a_number_is_400() -> None:
    response = await call(_ok, headers={"Content-Length": "x1"}, content=b"")
    assert response.status_code == 400


# --- bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON", "application/json; charset=utf-8",
     'application/json;charset="UTF-8"', "application/json; boundary=x"],
)  # fmt: skip
def test_json_media_types(content_type: str) -> None:
    check_media_type(content_type)


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/json", "application/jsonx", "application/json; charset=latin-1",
     "multipart/form-data", "application/x-www-form-urlencoded"],
)  # fmt: skip
def test_other_media_types_are_415(content_type: str | None) -> None:
    with pytest.raises(ApiError) as refused:
        check_media_type(content_type)
    assert refused.value.status == 415


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_reading_stops_at_the_limit() -> None:
    assert await read_limited(_chunks(b"ab", b"cd"), 4) == b"abcd"
    with pytest.raises(ApiError) as refused:
        await read_limited(_chunks(b"ab", b"cd", b"e"), 4)
    assert refused.value.status == 413


def test_json_numbers_stay_numbers() -> None:
    parsed = parse_json(b'{"a": 1.5, "b": 3, "c": 1e400, "d": NaN, "e": 123456789012345678901}')
    assert parsed["a"] == 1.5 and parsed["b"] == 3 and parsed["e"] == 123456789012345678901
    assert parsed["c"] == float("inf") and parsed["d"] != parsed["d"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "empty"),
        (b" \n", "empty"),
        (b"{", "malformed JSON"),
        (b"\xff", "not UTF-8"),
        (b"[" * 50_000, "malformed JSON"),
        (b"9" * 5000, "malformed JSON"),
        (b'{"a": 1} x', "malformed JSON"),
    ],
)
def test_malformed_bodies_are_400(body: bytes, says: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_json(body)
    assert refused.value.status == 400 and says in refused.value.message


# --- the usage request -----------------------------------------------------------------------


def test_one_event_becomes_record_usage_and_a_batch_record_usage_batch() -> None:
    ev = event("acct-1")
    sub, message = decode_request(ev)
    assert not sub.rejections and message.actor_name == ACTOR_RECORD_USAGE
    assert message.kwargs == ev
    sub, message = decode_request({"events": [ev, ev]})
    assert len(sub.items) == 2 and message.actor_name == ACTOR_RECORD_USAGE_BATCH
    assert message.kwargs == {"events": [ev, ev]}


def test_a_refusal_names_each_event_and_its_reason() -> None:
    good, bad = event("acct-1"), event("acct-1") | {"amount": 2, "event_id": "e-2"}
    sub, _ = decode_request({"events": [good, bad, {"x": 1}]})
    error = refusal(sub)
    assert error.status == 422 and error.code == "invalid_usage"
    assert error.message == "2 of 3 events refused; nothing was enqueued"
    assert error.details == [
        {
            "reason": "events[1]: amount must be a decimal string, got a number",
            "index": 1,
            "event_id": "e-2",
        },
        {
            "reason": "events[2]: missing field(s): account_id, amount, currency, event_id, "
            "occurred_at",
            "index": 2,
        },
    ]


@pytest.mark.parametrize("body", [[], "x", 1, None, True, [{"events": []}]])
def test_a_body_that_is_not_an_object_is_422(body: Any) -> None:
    with pytest.raises(ApiError) as refused:
        decode_request(body)
    assert refused.value.status == 422
    assert "the body must be one usage event" in refused.value.message


# --- the document ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(Settings(), WebSettings()).openapi()
    return schema


def test_the_routes(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    operations = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    assert operations == {
        ("GET", "/v1/accounts/{account_id}"),
        ("GET", "/v1/accounts/{account_id}/ledger"),
        ("GET", "/v1/accounts/{account_id}/charges"),
        ("POST", "/v1/usage"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    }


def test_every_v1_route_needs_the_bearer_token(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes == {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "cbt_<selector>_<secret>",
            "description": schemes["bearer"]["description"],
        }
    }
    for path, ops in document["paths"].items():
        for op in ops.values():
            assert bool(op.get("security")) == path.startswith("/v1/"), path
            if path.startswith("/v1/"):
                assert {"401", "403", "503"} <= set(op["responses"]), path


def test_every_response_is_documented_with_its_request_id(document: dict[str, Any]) -> None:
    for path, ops in document["paths"].items():
        for op in ops.values():
            for status, response in op["responses"].items():
                assert response["headers"]["X-Request-Id"]["required"] is True, (path, status)
                assert "application/json" in response["content"], (path, status)
                if status.startswith("4") or (status == "503" and path != "/readyz"):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Error", (path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_usage_body_is_the_contracts(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/usage"]["post"]["requestBody"]
    assert body["required"] is True
    schemas = document["components"]["schemas"]
    event_schema = schemas["UsageEvent"]
    assert set(event_schema["required"]) == {
        "event_id", "account_id", "amount", "currency", "occurred_at",
    }  # fmt: skip
    assert set(event_schema["properties"]) == set(event_schema["required"]) | {"kind"}
    assert event_schema["properties"]["amount"]["type"] == "string"
    assert schemas["UsageBatch"]["properties"]["events"]["maxItems"] == 1000
    assert json.dumps(document)  # serialisable as served


# --- settings and uvicorn --------------------------------------------------------------------


def test_web_settings_defaults() -> None:
    web = WebSettings()
    assert (web.host, web.port) == ("127.0.0.1", 8000)
    assert web.access_log is AccessLog.ERRORS


@pytest.mark.parametrize("value", ["abc", "0", "70000", ""])
def test_a_bad_port_is_named(value: str) -> None:
    with pytest.raises(ValidationError) as invalid:
        WebSettings(PORT=value)
    assert settings_problem(invalid.value).startswith("PORT")


def test_uvicorn_runs_the_factory_with_the_fast_loop_and_parser() -> None:
    config = uvicorn_config(WebSettings(PORT="9000", WEB_HOST="0.0.0.0", CONTACTO_WEB_WORKERS="3"))
    assert config["factory"] is True
    assert (config["host"], config["port"], config["workers"]) == ("0.0.0.0", 9000, 3)
    assert (config["loop"], config["http"]) == ("uvloop", "httptools")
    assert config["log_config"] is None and config["access_log"] is False
    assert base_url("::1", 8000) == "http://[::1]:8000"
