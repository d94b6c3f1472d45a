"""Environment mistakes that need no service running: one line on stderr, exit status 2.

PostgreSQL and Redis "down" are port 1 on this machine, where nothing ever listens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from common.cli.main import main
from config.settings import Settings, get_settings, settings_problem
from tests.support.procs import REPO

Case = tuple[dict[str, str], list[str], str]

CASES: dict[str, Case] = {
    "not postgresql": (
        {"DATABASE_URL": "mysql://billing:hunter2@db.internal/contacto"},
        ["accounts", "show", "X"],
        "DATABASE_URL must be a postgresql:// URL",
    ),
    "log format": (
        {"LOG_FORMAT": "xml"},
        ["accounts", "show", "X"],
        "LOG_FORMAT='xml': input should be 'json' or 'console'",
    ),
    "not a number": (
        {"CONTACTO_DB_POOL_SIZE": "many"},
        ["queues"],
        "CONTACTO_DB_POOL_SIZE='many': input should be a valid integer",
    ),
    "postgresql down": (
        {"DATABASE_URL": "postgresql://billing:hunter2@127.0.0.1:1/contacto"},
        ["accounts", "show", "X"],
        "cannot connect to PostgreSQL at 127.0.0.1:1: connection refused",
    ),
    "redis down": (
        {"REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"},
        ["enqueue", "usage", "A", "--amount", "1", "--currency", "USD"],
        "cannot reach Redis at 127.0.0.1:1: ",
    ),
}


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_and_status_2(
    case: str,
    fresh_settings: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env, argv, expected = CASES[case]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"contacto-billing: error: {expected}")
    assert captured.err.count("\n") == 1
    assert "hunter2" not in captured.err


def test_the_installed_module_prints_no_traceback() -> None:
    """The same through a real process: what an operator sees, exit status included."""
    env = {**os.environ, "LOG_FORMAT": "xml"}
    done = subprocess.run(
        [sys.executable, "-m", "common.cli.main", "accounts", "show", "X"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "contacto-billing: error: LOG_FORMAT='xml': input should be 'json' or 'console'\n"
    )


def test_settings_problem_names_every_variable_and_echoes_no_url() -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(
            DATABASE_URL="mysql://billing:hunter2@db/contacto",
            PAYMENT_GATEWAY="paypal",
            REDIS_URL=7,
        )
    text = settings_problem(exc.value)
    assert text == (
        "DATABASE_URL must be a postgresql:// URL; "
        "REDIS_URL: input should be a valid string; "
        "PAYMENT_GATEWAY='paypal': input should be 'simulated' or 'stripe'"
    )
