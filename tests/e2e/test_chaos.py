"""The chaos run's small size (`python -m bench.chaos --small`): the real pipeline killed,
restarted, its PostgreSQL and Redis restarted and Redis flushed, under load; then every
exactly-once check. One run (a module fixture, about three minutes on two cores), one test per
check, so that a red CI names the invariant that broke."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import REPO

pytestmark = [pytest.mark.slow, pytest.mark.redis_only, pytest.mark.timeout(330)]

RUN_TIMEOUT_S = 300

# Every check the run reports, in its order.
CHECKS = (
    "settled",
    "processes_stop",
    "events_debited_once",
    "balance_equals_ledger",
    "gateway_charges_credited_once",
    "suspensions_justified",
    "dead_letters_explained",
    "audit",
)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    has_pg = list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or shutil.which("pg_ctl")
    if shutil.which("redis-server") is None or not has_pg:
        pytest.skip("the chaos run needs redis-server and PostgreSQL's initdb/pg_ctl")
    work = tmp_path_factory.mktemp("chaos")
    results = work / "results.json"
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.chaos", "--small", "--workdir", str(work / "run"),
            "--json", str(results),
            # The session's Redis (system or embedded) holds the gateway's state, under the
            # run's own prefix, removed at its end.
            "--gateway-redis", os.environ["REDIS_URL"],
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert results.exists(), f"no results ({done.returncode}):\n{done.stderr[-5000:]}"
    data: dict[str, Any] = json.loads(results.read_text())
    data["stdout"], data["stderr"], data["returncode"] = done.stdout, done.stderr, done.returncode
    return data


@pytest.mark.parametrize("name", CHECKS)
def test_check_holds(chaos: dict[str, Any], name: str) -> None:
    found = {c["name"]: c for c in chaos["checks"]}
    assert name in found, f"the run reported no {name!r} check:\n{chaos['stdout']}"
    check = found[name]
    assert check["ok"], f"{name}: {check['violations']} violations:\n{chaos['stdout']}"


def test_everything_was_injected(chaos: dict[str, Any]) -> None:
    """The run did what it says: each kind killed and SIGTERMed, each server restarted, Redis
    flushed, the gateway's faults consumed, duplicates and batches sent."""
    injected = chaos["injected"]
    kinds = {"balance", "charge", "retry", "relay"}
    assert set(injected["sigkill"]) == kinds
    assert set(injected["sigterm_group"]) == kinds
    assert injected["postgres_restarts"] == injected["redis_restarts"] == 1
    assert injected["redis_flushes"] == 1
    assert injected["duplicate_deliveries"] > 0
    assert injected["single_messages"] > 0 and injected["batch_messages"] > 0
    assert injected["gateway_faults"]["decline"] > 0


def test_exit_status_says_whether_all_held(chaos: dict[str, Any]) -> None:
    assert chaos["returncode"] == (0 if chaos["ok"] else 1), chaos["stderr"][-3000:]
