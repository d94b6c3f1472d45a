"""A token never appears in the web process's logs, wherever a client puts it; every line of a
request carries its request id."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest

from common.credentials.tokens import parse_token
from config.settings import WebSettings
from tests.integration.web.conftest import bearer
from tests.support.factories import create_account, event, new_id


@pytest.fixture
def web_settings() -> WebSettings:
    """Every request logged (the default logs only errors and slow requests)."""
    return WebSettings(CONTACTO_WEB_ACCESS_LOG="all")


async def test_no_token_in_any_log_line(
    api: httpx.AsyncClient, conn: Any, token: str, log_lines: io.StringIO
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10")
    parsed = parse_token(token)
    assert parsed is not None
    selector, secret = parsed
    wrong = f"cbt_{selector}_{'A' * 43}"
    garbage = "s3cr3t-not-even-a-token-9f8e7d"
    calls: list[tuple[str, str, dict[str, str], Any]] = [
        ("GET", f"/v1/accounts/{acct}", bearer(token), None),
        ("GET", f"/v1/accounts/{acct}/ledger", bearer(token), None),
        ("POST", "/v1/usage", bearer(token), event(acct)),
        ("POST", "/v1/usage", bearer(token), {"events": [event(acct), {"amount": token}]}),
        ("GET", f"/v1/accounts/{acct}", bearer(wrong), None),
        ("GET", f"/v1/accounts/{acct}", bearer(garbage), None),
        ("GET", f"/v1/accounts/{acct}", {"Authorization": f"Basic {token}"}, None),
        # A client that puts its token where it does not belong: a path, a query, a request id.
        ("GET", f"/v1/accounts/{token}", bearer(token), None),
        ("GET", f"/v1/accounts/{acct}/ledger?after={token}", bearer(token), None),
        ("GET", f"/v1/accounts/{acct}", {**bearer(token), "X-Request-Id": token}, None),
        ("GET", "/healthz", {"X-Request-Id": token}, None),
    ]
    for method, path, headers, body in calls:
        await api.request(method, path, headers=headers, json=body)
    text = log_lines.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    requests = [line for line in lines if line["event"] == "http.request"]
    assert len(requests) == len(calls)
    for secret_text in (token, secret, wrong, garbage, secret[:20]):
        assert secret_text not in text
    assert "[redacted]" in text
    # Every line logged while a request ran carries its id; the refusals say why.
    assert all(line.get("request_id") for line in lines if line["logger"].startswith("web"))
    reasons = {line.get("reason") for line in lines if line["event"] == "auth.refused"}
    assert {"wrong_secret", "malformed", "not_bearer"} <= reasons
    accepted = [r for r in requests if r["path"] == f"/v1/accounts/{acct}" and r["status"] == 200]
    assert accepted and all(r["caller"].startswith("token-") for r in accepted)
