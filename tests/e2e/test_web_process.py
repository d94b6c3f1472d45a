"""The `web` process as the Procfile runs it, with a real balance worker: usage posted over
HTTP moves balances exactly once per event id, and SIGTERM stops it within seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from common.credentials.tokens import create_token
from tests.support.factories import balance_and_ledger, create_account, event, new_id
from tests.support.localstripe import free_port
from tests.support.procs import GroupProc, dramatiq_worker, running, web, worker_env
from tests.support.waiting import until

pytestmark = pytest.mark.slow

# What "within seconds" means here: uvicorn's graceful stop, the lifespan's disposal.
STOP_WITHIN_S = 8.0


@pytest.fixture
def web_url(namespace: str) -> Iterator[tuple[GroupProc, str]]:
    port = free_port()
    proc = web(worker_env(namespace), port, workers=2)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture
async def client(web_url: tuple[GroupProc, str], conn: Any) -> AsyncIterator[httpx.AsyncClient]:
    token = (await create_token(conn, new_id("e2e"))).token
    async with httpx.AsyncClient(
        base_url=web_url[1], headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as c:
        yield c


async def usage_rows(conn: Any, account: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE account_id = $1 AND kind = 'usage'", account
        )
    )


async def test_posted_usage_moves_the_balance_once_per_event(
    client: httpx.AsyncClient, web_url: tuple[GroupProc, str], conn: Any, namespace: str
) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="100")
    first = event(acct, "1.25")
    batch = [event(acct, "0.5") for _ in range(9)]
    with running(dramatiq_worker("workers.balance", "usage", worker_env(namespace))):
        assert (await client.post("/v1/usage", json=first)).status_code == 202
        await until(lambda: usage_rows(conn, acct), lambda n: n == 1, what="the first debit")
        state = (await client.get(f"/v1/accounts/{acct}")).json()
        assert state["balance"] == "98.75"
        # The same event again, alone and inside a batch: it counts once.
        assert (await client.post("/v1/usage", json=first)).status_code == 202
        accepted = await client.post("/v1/usage", json={"events": [*batch, first]})
        assert accepted.status_code == 202 and accepted.json()["accepted"] == 10
        await until(lambda: usage_rows(conn, acct), lambda n: n >= 10, what="ten debits")
        # A batch with one bad event is refused whole, with that event's reason.
        bad = [event(acct, "7"), {**event(acct, "7"), "currency": "usd"}]
        refused = await client.post("/v1/usage", json={"events": bad})
        assert refused.status_code == 422
        (detail,) = refused.json()["error"]["details"]
        assert detail["index"] == 1 and detail["event_id"] == bad[1]["event_id"]
        assert detail["reason"].startswith("events[1]: currency must be a 3-letter ISO 4217")
        # Nothing of it is ever debited: a last good event goes through behind it.
        last = event(acct, "0.25")
        assert (await client.post("/v1/usage", json=last)).status_code == 202
        await until(lambda: usage_rows(conn, acct), lambda n: n == 11, what="the last debit")
    balance, total, _ = await balance_and_ledger(conn, acct)
    expected = Decimal(100) - Decimal("1.25") - 9 * Decimal("0.5") - Decimal("0.25")
    assert balance == total == expected
    assert await usage_rows(conn, acct) == 11
    assert (await client.get(f"/v1/accounts/{acct}")).json()["balance"] == "94.00"
    ledger = (await client.get(f"/v1/accounts/{acct}/ledger", params={"limit": 500})).json()
    assert sorted(e["reference"] for e in ledger["entries"] if e["kind"] == "usage") == sorted(
        [first["event_id"], last["event_id"], *(e["event_id"] for e in batch)]
    )
    proc = web_url[0]
    token = client.headers["Authorization"].split()[1]
    assert token not in proc.output() and "Traceback" not in proc.output()


async def test_sigterm_to_its_process_group_stops_it_within_seconds(
    web_url: tuple[GroupProc, str], client: httpx.AsyncClient
) -> None:
    proc, _ = web_url
    # A client holding keep-alive connections open, as a load balancer does.
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    requests = [asyncio.create_task(client.get("/v1/accounts/x")) for _ in range(20)]
    await asyncio.gather(*requests)
    started = time.monotonic()
    took = await asyncio.to_thread(proc.stop_group, 30)
    assert took < STOP_WITHIN_S, f"stopped in {took:.1f}s\n{proc.output()[-3000:]}"
    assert time.monotonic() - started < STOP_WITHIN_S
    out = proc.output()
    assert out.count('"web.stopped"') == 2, out[-3000:]  # each worker disposed its resources
    assert "Traceback" not in out
