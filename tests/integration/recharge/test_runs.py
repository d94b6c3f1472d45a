"""Starting runs (common/recharge/runs.py): at most one automatic run in flight per account."""

from __future__ import annotations

import asyncio
from typing import Any

from common.usage.service import apply_submissions
from tests.support.factories import create_account, event, new_id, submission
from tests.support.pipeline import (
    NO_WAIT,
)


async def test_two_usage_messages_racing_start_one_run(engine: Any, conn: Any) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="100", threshold="100", recharge="20")
    outcomes = await asyncio.gather(
        *(apply_submissions(engine, NO_WAIT, [submission(event(acct, "10"))]) for _ in range(10))
    )
    started = [o.runs_started for [o] in outcomes if o.runs_started]
    assert len(started) == 1
    assert (
        await conn.fetchval("SELECT count(*) FROM recharge_runs WHERE account_id = $1", acct) == 1
    )
