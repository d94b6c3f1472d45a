"""Processes started on a database that is not migrated: one error line, then a prompt exit."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from common.cli.main import main
from common.db.schema import head_revision
from config.settings import get_settings
from tests.support.databases import fresh_database
from tests.support.procs import Proc, worker_env
from workers._startup import EXIT_NOT_STARTED

pytestmark = pytest.mark.slow

HINT = "run `contacto-billing db upgrade` first"


def run_to_exit(argv: list[str], env: dict[str, str], name: str) -> tuple[int, str]:
    proc = Proc([sys.executable, *argv], env, name)
    try:
        code = proc.wait_exit(timeout_s=30)
        return code, proc.output()
    finally:
        proc.stop()
        proc.log.unlink(missing_ok=True)


def error_lines(output: str) -> list[dict[str, object]]:
    """Our JSON log lines at error level (dramatiq's own lines are not JSON)."""
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] == "error"]


@pytest.fixture
def empty_database(namespace: str) -> Iterator[tuple[str, dict[str, str]]]:
    with fresh_database() as (name, url):
        yield name, worker_env(namespace, DATABASE_URL=url)


def test_relay_on_an_empty_database(empty_database: tuple[str, dict[str, str]]) -> None:
    name, env = empty_database
    code, output = run_to_exit(["-m", "workers.relay"], env, "relay")
    assert code == EXIT_NOT_STARTED
    assert "Traceback" not in output
    [line] = error_lines(output)
    assert line["event"] == "db.schema_missing" and line["logger"] == "workers.startup"
    assert (line["database"], line["database_exists"]) == (name, True)
    assert (line["revision"], line["head"], line["hint"]) == (None, head_revision(), HINT)
    assert len(output.strip().splitlines()) == 1  # nothing else: the relay never started


def test_relay_on_a_database_behind_the_code(
    empty_database: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env = empty_database
    monkeypatch.setenv("DATABASE_URL", env["DATABASE_URL"])
    get_settings.cache_clear()
    try:
        assert main(["db", "upgrade", "0003"]) == 0
    finally:
        get_settings.cache_clear()
    code, output = run_to_exit(["-m", "workers.relay"], env, "relay")
    assert code == EXIT_NOT_STARTED
    [line] = error_lines(output)
    assert (line["event"], line["revision"], line["hint"]) == ("db.schema_outdated", "0003", HINT)


def test_dramatiq_worker_on_an_empty_database(
    empty_database: tuple[str, dict[str, str]],
) -> None:
    name, env = empty_database
    argv = ["-m", "dramatiq", "workers.retry", "--processes", "1", "--threads", "1"]
    code, output = run_to_exit([*argv, "--queues", "retries"], env, "retry")
    # dramatiq's main process stops when its worker exits, and passes the status on (its own
    # "exited unexpectedly" line may or may not make it out of its log pipe before it ends).
    assert code == EXIT_NOT_STARTED
    assert "Traceback" not in output
    [line] = error_lines(output)
    assert (line["event"], line["database"], line["hint"]) == ("db.schema_missing", name, HINT)
    assert "Worker process is ready for action" not in output
