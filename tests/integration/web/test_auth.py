"""Bearer tokens on the account API: missing, malformed, wrong, revoked → 401; scope → 403."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from common.credentials.tokens import (
    SCOPE_ACCOUNTS_READ,
    SCOPE_USAGE_WRITE,
    list_tokens,
    parse_token,
    revoke_token,
)
from tests.integration.web.conftest import bearer, new_token
from tests.support.factories import create_account, event, new_id
from tests.support.waiting import until_true

ROUTES = [
    ("GET", "/v1/accounts/{acct}"),
    ("GET", "/v1/accounts/{acct}/ledger"),
    ("GET", "/v1/accounts/{acct}/charges"),
    ("POST", "/v1/usage"),
]


async def call(api: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return await api.request(method, path, **kwargs)


def assert_401(response: httpx.Response, error: str | None) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    if error is not None:
        assert f'error="{error}"' in challenge
    assert response.headers["X-Request-Id"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_no_token_is_401(api: httpx.AsyncClient, conn: Any, method: str, path: str) -> None:
    acct = new_id()
    await create_account(conn, acct)
    response = await call(api, method, path.format(acct=acct), json=event(acct))
    assert_401(response, None)
    assert "no bearer token" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "bearer-cbt_x",
        "Token abc",
    ],
)
async def test_a_header_that_is_not_bearer_is_401(api: httpx.AsyncClient, header: str) -> None:
    response = await api.get("/v1/accounts/x", headers={"Authorization": header})
    assert_401(response, "invalid_request")


@pytest.mark.parametrize(
    "presented",
    [
        "abc",
        "cbt_",
        "cbt_0123456789abcdef",
        "cbt_0123456789ABCDEF_" + "A" * 43,  # upper-case selector
        "cbt_0123456789abcdef_" + "A" * 42,  # one short
        "cbt_0123456789abcdef_" + "A" * 44,  # one long
        "cbt_0123456789abcdef_" + "A" * 42 + "=",
        "x" * 5000,
    ],
)
async def test_a_malformed_token_is_401_without_a_database_lookup(
    api: httpx.AsyncClient, presented: str
) -> None:
    response = await api.get("/v1/accounts/x", headers=bearer(presented))
    assert_401(response, "invalid_token")
    assert "malformed" in response.json()["error"]["message"]


async def test_an_unknown_or_wrong_token_is_401(
    api: httpx.AsyncClient, conn: Any, token: str
) -> None:
    parsed = parse_token(token)
    assert parsed is not None
    selector, secret = parsed
    wrong_secret = f"cbt_{selector}_{secret[:-1]}{'B' if secret[-1] != 'B' else 'C'}"
    unknown = f"cbt_{'0' * 16}_{secret}"
    for presented in (wrong_secret, unknown):
        response = await api.get("/v1/accounts/x", headers=bearer(presented))
        assert_401(response, "invalid_token")
        assert response.json()["error"]["message"] == "invalid or revoked token"


async def test_a_revoked_token_is_401_as_soon_as_the_workers_hear_of_it(
    app: FastAPI, api: httpx.AsyncClient, conn: Any
) -> None:
    acct = new_id()
    await create_account(conn, acct)
    token = await new_token(conn)
    assert (await api.get(f"/v1/accounts/{acct}", headers=bearer(token))).status_code == 200
    # Remembered by the worker: only the revocation's notification can make it forget.
    assert app.state.resources.tokens.get(token) is not None
    name = next(t.name for t in await list_tokens(conn) if token.startswith(f"cbt_{t.selector}_"))
    await revoke_token(conn, name)
    # The NOTIFY reaches the worker's listening connection in milliseconds.
    tokens = app.state.resources.tokens
    await until_true(lambda: tokens.get(token) is None, timeout_s=5, what="the notification")
    response = await api.get(f"/v1/accounts/{acct}", headers=bearer(token))
    assert_401(response, "invalid_token")


async def test_a_token_without_the_routes_scope_is_403(api: httpx.AsyncClient, conn: Any) -> None:
    acct = new_id()
    await create_account(conn, acct)
    reader = await new_token(conn, (SCOPE_ACCOUNTS_READ,))
    writer = await new_token(conn, (SCOPE_USAGE_WRITE,))
    assert (await api.get(f"/v1/accounts/{acct}", headers=bearer(reader))).status_code == 200
    refused = await api.post("/v1/usage", json=event(acct), headers=bearer(reader))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    assert (await api.get(f"/v1/accounts/{acct}", headers=bearer(writer))).status_code == 403
    assert (
        await api.post("/v1/usage", json=event(acct), headers=bearer(writer))
    ).status_code == 202


async def test_use_is_recorded_at_most_once_a_minute(api: httpx.AsyncClient, conn: Any) -> None:
    token = await new_token(conn)
    selector = token.split("_")[1]
    used = "SELECT last_used_at FROM api_tokens WHERE selector = $1"
    assert await conn.fetchval(used, selector) is None
    await api.get("/v1/accounts/x", headers=bearer(token))
    first = await conn.fetchval(used, selector)
    assert first is not None
    await api.get("/v1/accounts/x", headers=bearer(token))
    assert await conn.fetchval(used, selector) == first


async def test_health_and_the_document_need_no_token(api: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert (await api.get(path)).status_code == 200, path
