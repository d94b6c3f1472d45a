"""Environment mistakes against the real PostgreSQL and Redis: one line, exit status 2."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from common.cli.main import main
from config.settings import get_settings
from tests.support.databases import fresh_database
from tests.support.factories import new_id

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    """main(argv) with these environment variables; returns (status, stdout, stderr)."""

    def run(*argv: str, **env: str) -> tuple[int, str, str]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    get_settings.cache_clear()


def one_line(err: str) -> str:
    assert err.startswith("contacto-billing: error: ") and err.count("\n") == 1, err
    return err.removeprefix("contacto-billing: error: ").rstrip("\n")


def test_a_database_that_does_not_exist(cli: Cli) -> None:
    with fresh_database(create=False) as (name, url):
        code, out, err = cli("accounts", "show", "X", DATABASE_URL=url)
    assert (code, out) == (2, "")
    assert one_line(err) == (
        f"database {name} does not exist at 127.0.0.1:5432; "
        "run `contacto-billing db upgrade` (it creates it)"
    )


def test_a_database_that_was_never_migrated(cli: Cli) -> None:
    with fresh_database() as (name, url):
        code, out, err = cli("accounts", "show", "X", DATABASE_URL=url)
        assert (code, out) == (2, "")
        assert one_line(err) == (
            f'relation "accounts" does not exist in database {name}; '
            "run `contacto-billing db upgrade` first"
        )
        # The recharge commands turn other database errors into refusals: not this one.
        code, _, err = cli("accounts", "recharge", "X", "--amount", "30")
        assert code == 2 and "db upgrade" in one_line(err)


def test_stripe_without_a_key(cli: Cli) -> None:
    acct = new_id()
    assert cli("accounts", "create", acct)[0] == 0
    code, out, err = cli(
        "accounts", "card", acct, "--payment-method", "pm_card_visa", PAYMENT_GATEWAY="stripe"
    )
    assert (code, out) == (2, "")
    assert one_line(err) == "PAYMENT_GATEWAY=stripe needs STRIPE_API_KEY to be set"


def test_redis_down_while_enqueueing_for_a_known_account(cli: Cli) -> None:
    acct = new_id()
    assert cli("accounts", "create", acct, "--currency", "EUR")[0] == 0
    code, out, err = cli(
        "enqueue", "usage", acct, "--amount", "1", "--count", "3", REDIS_URL="redis://127.0.0.1:1/0"
    )
    assert (code, out) == (2, "")
    assert one_line(err).startswith("cannot reach Redis at 127.0.0.1:1: ")


def test_enqueue_without_postgresql_says_why_the_currency_is_a_guess(
    cli: Cli, namespace: str
) -> None:
    code, out, err = cli(
        "enqueue",
        "usage",
        "A",
        "--amount",
        "1",
        "--json",
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/contacto",
        CONTACTO_BROKER_NAMESPACE=namespace,
    )
    assert code == 0 and json.loads(out)["events"] == 1
    assert err == (
        "warning: cannot connect to PostgreSQL at 127.0.0.1:1: connection refused; sending USD\n"
    )
