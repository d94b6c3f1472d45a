"""schemathesis against the `web` process's own /openapi.json: no 500, every response as the
document says (status, content type, headers, body schema), what it calls invalid refused,
what it calls valid accepted (see schemathesis.toml for the one nuance), no route without its
token. Run on the real process, started as the Procfile starts it, in about half a minute.

Half of the account ids it sends name a real account with ledger entries and charges (a
schemathesis dictionary), so 200 responses are checked too; the other half are fuzzed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.credentials.tokens import create_token
from tests.support.factories import create_account, new_id
from tests.support.localstripe import free_port
from tests.support.procs import GroupProc, web, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HERE = Path(__file__).parent
ST = Path(sys.executable).with_name("st")
# Bounds: examples per operation and phase, and the whole run's wall clock (the run ends well
# before either on this machine: ~10-30 s).
MAX_EXAMPLES = 40
RUN_TIMEOUT_S = 180


@pytest.fixture
def web_process(namespace: str) -> Iterator[tuple[GroupProc, str]]:
    port = free_port()
    proc = web(worker_env(namespace), port)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


async def seed_account(conn: Any) -> str:
    """An account with a few ledger entries and charges, whose pages schemathesis reads."""
    acct = new_id("st")
    await create_account(conn, acct, balance="100", threshold="50", recharge="25",
                         payment_method="pm_card_visa")  # fmt: skip
    run_id = await conn.fetchval(
        "INSERT INTO recharge_runs (account_id, kind, trigger, tier, target_amount, "
        "recharge_amount, max_charges, state, finished_at) "
        "VALUES ($1, 'auto', 'threshold', 0, 50, 25, 10, 'failed', now()) RETURNING id",
        acct,
    )
    await conn.execute(
        "INSERT INTO charges (run_id, account_id, seq, amount, currency, idempotency_key, "
        "status, failure_code, failure_message) "
        "VALUES ($1, $2, 1, 25, 'USD', $3, 'failed', 'card_declined', 'Your card was declined.')",
        run_id,
        acct,
        f"recharge-{run_id}-charge-1",
    )
    return acct


def config_file(tmp_path: Path, account: str) -> Path:
    """schemathesis.toml, plus the dictionary of real account ids."""
    path = tmp_path / "schemathesis.toml"
    path.write_text(
        (HERE / "schemathesis.toml").read_text()
        + f"""
[dictionaries.accounts]
values = ["{account}"]

[parameters]
"path.account_id" = {{ dictionary = "accounts", probability = 0.5 }}
"""
    )
    return path


async def test_the_api_keeps_to_its_openapi_document(
    web_process: tuple[GroupProc, str], conn: Any, tmp_path: Path
) -> None:
    proc, url = web_process
    account = await seed_account(conn)
    token = (await create_token(conn, new_id("schemathesis"))).token
    argv = [
        str(ST), "--config-file", str(config_file(tmp_path, account)),
        "run", f"{url}/openapi.json",
        "--header", f"Authorization: Bearer {token}",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--request-timeout", "10",
        "--no-color",
    ]  # fmt: skip
    env = dict(os.environ, NO_COLOR="1", SCHEMATHESIS_HOOKS="")
    result = await asyncio.to_thread(
        subprocess.run,
        argv,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-12000:] + "\n--- web ---\n" + proc.output()[-3000:]
    assert "6 selected / 6 total" in report, report[-3000:]
    # It reached the real account's pages, not only 404s.
    assert f"/v1/accounts/{account}/ledger" in proc.output()
    assert token not in proc.output()
