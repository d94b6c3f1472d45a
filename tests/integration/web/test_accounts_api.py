"""GET /v1/accounts/{id}, …/ledger, …/charges: what `accounts show` shows, page by page."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from common.cli.main import main
from tests.integration.web.conftest import bearer
from tests.support.factories import create_account, new_id

API_KEYS = {
    "account_id",
    "currency",
    "balance",
    "status",
    "auto_recharge",
    "retry_tier",
    "armed_level",
}


async def add_ledger(conn: Any, acct: str, amounts: list[str]) -> None:
    """Support credits and debits, with their running balance, as the ledger keeps them."""
    balance = Decimal(await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", acct))
    for i, amount in enumerate(amounts):
        balance += Decimal(amount)
        await conn.execute(
            "INSERT INTO ledger_entries (account_id, amount, balance_after, kind, reference) "
            "VALUES ($1, $2, $3, 'credit', $4)",
            acct,
            Decimal(amount),
            balance,
            f"{acct}-ref-{i}",
        )
    await conn.execute("UPDATE accounts SET balance = $2 WHERE id = $1", acct, balance)


async def test_the_account_is_what_accounts_show_json_shows_without_charges(
    api: httpx.AsyncClient, conn: Any, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="12.5", currency="EUR", threshold="100", recharge="25", tier=2,
        payment_method="pm_card_visa",
    )  # fmt: skip
    response = await api.get(f"/v1/accounts/{acct}", headers=bearer(token))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == API_KEYS
    assert await asyncio.to_thread(main, ["accounts", "show", acct, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert body == {k: shown[k] for k in API_KEYS}
    assert body["balance"] == "12.50" and body["armed_level"] == "50.00"
    assert body["auto_recharge"] == {
        "enabled": True,
        "balance_amount": "100.00",
        "recharge_amount": "25.00",
        "mode": "repeat",
    }


async def test_a_suspended_account_says_so(api: httpx.AsyncClient, conn: Any, token: str) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="-3", status="suspended")
    body = (await api.get(f"/v1/accounts/{acct}", headers=bearer(token))).json()
    assert body["status"] == "suspended" and body["balance"] == "-3.00"


@pytest.mark.parametrize(
    "account_id",
    ["nope-never-created", "a\x00b", "x" * 201, "\u00e9t\u00e9", "%ff", " ", "...", "a b"],
)
async def test_unknown_accounts_and_ids_of_any_text_are_404(
    api: httpx.AsyncClient, token: str, account_id: str
) -> None:
    path = quote(account_id, safe="")
    for suffix in ("", "/ledger", "/charges"):
        response = await api.get(f"/v1/accounts/{path}{suffix}", headers=bearer(token))
        assert response.status_code == 404, (account_id, suffix, response.text)
        assert response.json()["error"]["code"] == "account_not_found"


async def test_the_ledger_pages_in_id_order_with_a_next_cursor(
    api: httpx.AsyncClient, conn: Any, token: str
) -> None:
    acct, other = new_id(), new_id()
    await create_account(conn, acct)
    await create_account(conn, other)
    await add_ledger(conn, acct, ["1", "2.5", "-0.013007", "4", "5"])
    await add_ledger(conn, other, ["9"])
    seen: list[dict[str, Any]] = []
    after = 0
    pages = 0
    while True:
        response = await api.get(
            f"/v1/accounts/{acct}/ledger",
            params={"after": after, "limit": 2},
            headers=bearer(token),
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["account_id"] == acct
        seen += page["entries"]
        pages += 1
        if page["next"] is None:
            break
        after = page["next"]
    assert pages == 3
    assert [e["amount"] for e in seen] == ["1.00", "2.50", "-0.013007", "4.00", "5.00"]
    ids = [e["id"] for e in seen]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert set(seen[0]) == {
        "id", "kind", "amount", "balance_after", "reference", "memo", "created_at",
    }  # fmt: skip
    empty = await api.get(
        f"/v1/accounts/{acct}/ledger", params={"after": ids[-1]}, headers=bearer(token)
    )
    assert empty.json() == {"account_id": acct, "entries": [], "next": None}


async def test_charges_page_with_their_run_kind(
    api: httpx.AsyncClient, conn: Any, token: str
) -> None:
    acct = new_id()
    await create_account(conn, acct, threshold="100", recharge="25", payment_method="pm_card_visa")
    run_id = await conn.fetchval(
        "INSERT INTO recharge_runs (account_id, kind, trigger, tier, target_amount, "
        "recharge_amount, max_charges, state, finished_at) "
        "VALUES ($1, 'auto', 'threshold', 0, 100, 25, 10, 'failed', now()) RETURNING id",
        acct,
    )
    for seq, status in ((1, "failed"), (2, "failed"), (3, "failed")):
        await conn.execute(
            "INSERT INTO charges (run_id, account_id, seq, amount, currency, idempotency_key, "
            "status, failure_code) VALUES ($1, $2, $3, 25, 'USD', $4, $5, $6)",
            run_id, acct, seq, f"recharge-{run_id}-charge-{seq}", status,
            "card_declined",
        )  # fmt: skip
    first = (
        await api.get(f"/v1/accounts/{acct}/charges", params={"limit": 2}, headers=bearer(token))
    ).json()
    assert [c["seq"] for c in first["charges"]] == [1, 2]
    assert first["charges"][1]["failure_code"] == "card_declined"
    assert first["charges"][0]["status"] == "failed"
    assert first["charges"][0]["kind"] == "auto" and first["charges"][0]["amount"] == "25.00"
    rest = (
        await api.get(
            f"/v1/accounts/{acct}/charges",
            params={"after": first["next"], "limit": 2},
            headers=bearer(token),
        )
    ).json()
    assert [c["seq"] for c in rest["charges"]] == [3] and rest["next"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": "ten"},
        {"after": -1},
        {"after": 2**63},
        {"after": "1.5"},
        {"after": "x" * 10000},
    ],
)
async def test_bad_cursors_and_limits_are_422(
    api: httpx.AsyncClient, conn: Any, token: str, params: dict[str, Any]
) -> None:
    acct = new_id()
    await create_account(conn, acct)
    response = await api.get(f"/v1/accounts/{acct}/ledger", params=params, headers=bearer(token))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["details"][0]["location"].startswith(
        "query."
    )
    assert "x" * 100 not in response.text  # the input is not echoed


async def test_unknown_routes_and_methods_answer_json(api: httpx.AsyncClient, token: str) -> None:
    missing = await api.get("/v2/nothing", headers=bearer(token))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = await api.delete("/v1/usage", headers=bearer(token))
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed"
