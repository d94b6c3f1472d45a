"""Billing console credentials against a real PostgreSQL: issue, login, change, attempt limits."""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import hashlib
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
import pytest
import structlog

import common.credentials.logins as credentials_module
from common.cli._common import CliError
from common.cli.credentials import register_under_accounts
from common.credentials import passwords
from common.credentials.logins import (
    MAX_FAILED_ATTEMPTS,
    AlreadyUsedError,
    ExpiredError,
    InvalidTtlError,
    NoCredentialsError,
    PasswordMismatchError,
    PasswordReuseError,
    TooManyAttemptsError,
    UnknownAccountError,
    WeakPasswordError,
    WrongPasswordError,
    change_password,
    issue_temporary,
    login,
)
from common.logging import configure_logging
from tests.support.factories import new_id
from tests.support.services import Services
from tests.support.session import TEST_DB

Conn: TypeAlias = "asyncpg.Connection[Any]"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
NEW = "Tidal-Basin-Ferry-7"


def at(minutes: float = 0, hours: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, hours=hours)


@pytest.fixture
async def account(conn: Conn) -> str:
    account_id = new_id()
    await conn.execute("INSERT INTO accounts (id, currency) VALUES ($1, 'USD')", account_id)
    return account_id


async def stored(conn: Conn, account_id: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM billing_logins WHERE account_id = $1", account_id
    )
    assert row is not None
    return row


async def test_temporary_password_logs_in_once_then_must_be_changed(
    conn: Conn, account: str
) -> None:
    issued = await issue_temporary(conn, account, now=T0)
    assert issued.replaced is None and issued.expires_at == at(hours=24)
    assert len(issued.password) == 20 and issued.password not in repr(issued)
    row = await stored(conn, account)
    assert row["username"] == issued.username == f"billing-{account}"
    assert row["password_hash"] != issued.password and issued.password not in row["password_hash"]
    assert passwords.verify_password(issued.password, row["password_hash"])
    assert row["is_temporary"] and not row["must_change_password"]

    result = await login(conn, account, issued.password, now=at(minutes=5))
    assert result.must_change_password
    row = await stored(conn, account)
    assert row["consumed_at"] == at(minutes=5) and row["must_change_password"]

    with pytest.raises(AlreadyUsedError, match="already used"):
        await login(conn, account, issued.password, now=at(minutes=6))


async def test_temporary_password_expires(conn: Conn, account: str) -> None:
    issued = await issue_temporary(conn, account, now=T0)
    with pytest.raises(ExpiredError, match="expired"):
        await login(conn, account, issued.password, now=at(hours=24))
    # ...and it cannot be used to set a password either, even though it was never consumed.
    with pytest.raises(ExpiredError, match="expired"):
        await change_password(conn, account, issued.password, NEW, NEW, now=at(hours=25))
    assert await login(conn, account, issued.password, now=at(hours=24) - timedelta(seconds=1))

    short = await issue_temporary(conn, account, ttl=timedelta(hours=1), now=T0)
    with pytest.raises(ExpiredError):
        await login(conn, account, short.password, now=at(minutes=61))


async def test_unknown_account_and_account_without_credentials(conn: Conn, account: str) -> None:
    with pytest.raises(UnknownAccountError, match="unknown account"):
        await issue_temporary(conn, "no-such-account")
    with pytest.raises(UnknownAccountError):
        await login(conn, "no-such-account", "whatever-it-is-1")
    with pytest.raises(UnknownAccountError):
        await change_password(conn, "no-such-account", "a", NEW, NEW)
    with pytest.raises(NoCredentialsError, match="no billing credentials"):
        await login(conn, account, "whatever-it-is-1")


async def test_reissue_replaces_the_previous_credential_and_says_so(
    conn: Conn, account: str
) -> None:
    first = await issue_temporary(conn, account, now=T0)
    second = await issue_temporary(conn, account, now=at(minutes=1))
    assert second.replaced == "temporary" and second.password != first.password
    with pytest.raises(WrongPasswordError):
        await login(conn, account, first.password, now=at(minutes=2))
    await change_password(conn, account, second.password, NEW, NEW, now=at(minutes=3))
    third = await issue_temporary(conn, account, now=at(minutes=4))
    assert third.replaced == "password" and third.username == first.username
    with pytest.raises(WrongPasswordError):
        await login(conn, account, NEW, now=at(minutes=5))
    # A fresh credential starts with a clean attempt count.
    assert (await stored(conn, account))["failed_attempts"] == 1
    await issue_temporary(conn, account, now=at(minutes=6))
    assert (await stored(conn, account))["failed_attempts"] == 0


@pytest.mark.parametrize(
    ("new", "reason"),
    [
        ("short-1A", "at least 12 characters"),
        ("onlylowercaseletters", "two kinds"),
        ("Password1234", "too common"),
        ("{account}-Extra-9", "account id"),
    ],
)
async def test_weak_new_passwords_are_refused_with_the_reason(
    conn: Conn, account: str, new: str, reason: str
) -> None:
    issued = await issue_temporary(conn, account, now=T0)
    new = new.format(account=account)
    with pytest.raises(WeakPasswordError, match=reason):
        await change_password(conn, account, issued.password, new, new, now=at(minutes=1))


async def test_change_password_refusals_then_success(conn: Conn, account: str) -> None:
    issued = await issue_temporary(conn, account, now=T0)
    temp = issued.password
    await login(conn, account, temp, now=at(minutes=1))  # consumes it: the FAQ flow

    with pytest.raises(WrongPasswordError, match="wrong password"):
        await change_password(conn, account, "not-the-password-1", NEW, NEW, now=at(minutes=2))
    with pytest.raises(PasswordMismatchError, match="do not match"):
        await change_password(conn, account, temp, NEW, NEW + "x", now=at(minutes=2))
    with pytest.raises(PasswordReuseError, match="temporary password"):
        await change_password(conn, account, temp, temp, temp, now=at(minutes=2))
    # Refusals after a right old password are not counted as guesses.
    assert (await stored(conn, account))["failed_attempts"] == 1

    await change_password(conn, account, temp, NEW, NEW, now=at(minutes=3))
    row = await stored(conn, account)
    assert not row["is_temporary"] and not row["must_change_password"]
    assert row["expires_at"] is None and row["failed_attempts"] == 0
    assert not (await login(conn, account, NEW, now=at(minutes=4))).must_change_password
    assert not (await login(conn, account, NEW, now=at(hours=24 * 400))).must_change_password
    with pytest.raises(WrongPasswordError):
        await login(conn, account, temp, now=at(minutes=5))
    with pytest.raises(PasswordReuseError, match="differ from the current"):
        await change_password(conn, account, NEW, NEW, NEW, now=at(minutes=6))
    await change_password(conn, account, NEW, "Another-Good-One-8", "Another-Good-One-8")


async def test_unconsumed_temporary_can_be_changed_directly(conn: Conn, account: str) -> None:
    issued = await issue_temporary(conn, account, now=T0)
    await change_password(conn, account, issued.password, NEW, NEW, now=at(minutes=1))
    assert not (await login(conn, account, NEW, now=at(minutes=2))).must_change_password


async def test_login_upgrades_a_hash_made_with_older_parameters(conn: Conn, account: str) -> None:
    issued = await issue_temporary(conn, account, now=T0)
    await change_password(conn, account, issued.password, NEW, NEW, now=at(minutes=1))
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(NEW.encode(), salt=salt, n=2**10, r=8, p=1, dklen=32)
    b64 = [base64.b64encode(x).decode().rstrip("=") for x in (salt, key)]
    await conn.execute(
        "UPDATE billing_logins SET password_hash = $2 WHERE account_id = $1",
        account,
        f"scrypt$1024$8$1${b64[0]}${b64[1]}",
    )
    await login(conn, account, NEW, now=at(minutes=2))
    upgraded = (await stored(conn, account))["password_hash"]
    assert upgraded.startswith("$argon2id$") and passwords.verify_password(NEW, upgraded)


async def test_login_upgrades_a_current_scrypt_hash_to_argon2id(conn: Conn, account: str) -> None:
    issued = await issue_temporary(conn, account, now=T0)
    await change_password(conn, account, issued.password, NEW, NEW, now=at(minutes=1))
    await conn.execute(
        "UPDATE billing_logins SET password_hash = $2 WHERE account_id = $1",
        account,
        passwords.hash_scrypt(NEW),
    )
    await login(conn, account, NEW, now=at(minutes=2))
    upgraded = (await stored(conn, account))["password_hash"]
    assert upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify_password(NEW, upgraded)
    # A wrong password never rewrites the hash.
    with pytest.raises(WrongPasswordError):
        await login(conn, account, "Wrong-Horse-99", now=at(minutes=3))
    assert (await stored(conn, account))["password_hash"] == upgraded


async def test_issue_refuses_a_ttl_out_of_range(conn: Conn, account: str) -> None:
    for ttl in (timedelta(0), timedelta(hours=-1), timedelta(days=8)):
        with pytest.raises(InvalidTtlError, match="at most 7 days"):
            await issue_temporary(conn, account, ttl=ttl)


async def test_attempts_are_limited_and_the_limit_lifts(conn: Conn, account: str) -> None:
    issued = await issue_temporary(conn, account, now=T0)
    for i in range(MAX_FAILED_ATTEMPTS):
        with pytest.raises(WrongPasswordError):
            await login(conn, account, f"guess-number-{i}", now=at(minutes=i))
    # Locked at the 5th failure (minute 4) for 15 minutes: even the right password waits.
    with pytest.raises(TooManyAttemptsError, match="too many attempts, try again in 14 minutes"):
        await login(conn, account, issued.password, now=at(minutes=5))
    with pytest.raises(TooManyAttemptsError, match=r"try again in 1 minute$"):
        await change_password(conn, account, issued.password, NEW, NEW, now=at(minutes=18.5))
    assert (await stored(conn, account))["failed_attempts"] == MAX_FAILED_ATTEMPTS
    assert (await login(conn, account, issued.password, now=at(minutes=19))).must_change_password
    row = await stored(conn, account)
    assert row["failed_attempts"] == 0 and row["locked_until"] is None


async def test_failures_outside_the_window_or_after_success_do_not_add_up(
    conn: Conn, account: str
) -> None:
    issued = await issue_temporary(conn, account, now=T0)
    await change_password(conn, account, issued.password, NEW, NEW, now=at(minutes=1))
    for minute in (2, 3, 4, 5, 17, 18, 19, 20):  # 4 in one window, 4 in the next
        with pytest.raises(WrongPasswordError):
            await login(conn, account, "bad-guess-000", now=at(minutes=minute))
    assert (await stored(conn, account))["failed_attempts"] == 4
    await login(conn, account, NEW, now=at(minutes=21))  # success resets the count
    for minute in (22, 23, 24, 25):
        with pytest.raises(WrongPasswordError):
            await login(conn, account, "bad-guess-000", now=at(minutes=minute))
    await login(conn, account, NEW, now=at(minutes=26))


async def test_concurrent_wrong_attempts_cannot_exceed_the_limit(
    conn: Conn, account: str, services: Services
) -> None:
    await issue_temporary(conn, account, now=T0)
    attempts = 12
    conns = [await asyncpg.connect(services.database_url(TEST_DB)) for _ in range(attempts)]
    try:
        results = await asyncio.gather(
            *(login(c, account, f"guess-{i}-abcdefgh", now=at(1)) for i, c in enumerate(conns)),
            return_exceptions=True,
        )
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    kinds = [type(r).__name__ for r in results]
    assert kinds.count("WrongPasswordError") == MAX_FAILED_ATTEMPTS
    assert kinds.count("TooManyAttemptsError") == attempts - MAX_FAILED_ATTEMPTS
    assert (await stored(conn, account))["failed_attempts"] == MAX_FAILED_ATTEMPTS


async def test_the_table_refuses_inconsistent_rows(conn: Conn, account: str) -> None:
    await issue_temporary(conn, account, now=T0)
    bad_updates = [
        "password_hash = 'Correct-Horse-42'",  # a clear-text password is not a hash
        "is_temporary = false",  # a chosen password with an expiry
        "expires_at = NULL",  # a temporary password that never expires
        "failed_attempts = 3",  # a count without a window
    ]
    for assignment in bad_updates:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                f"UPDATE billing_logins SET {assignment} WHERE account_id = $1", account
            )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await conn.execute(
            "INSERT INTO billing_logins (account_id, username, password_hash, is_temporary,"
            " password_set_at) VALUES ('ghost', 'billing-ghost', $1, false, now())",
            passwords.hash_password("Correct-Horse-42"),
        )


# --- the command line ----------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    """What `main` does, with a parser of our own: `accounts` is wired in by another module."""
    parser = argparse.ArgumentParser(prog="contacto-billing")
    sub = parser.add_subparsers(dest="command", required=True)
    accounts = sub.add_parser("accounts").add_subparsers(dest="accounts_cmd", required=True)
    register_under_accounts(accounts)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"contacto-billing: error: {exc}", file=sys.stderr)
        return 1


async def cli(monkeypatch: pytest.MonkeyPatch, argv: list[str], stdin: str = "") -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    # The handlers call asyncio.run(): they get a thread of their own, off the test's loop.
    return await asyncio.to_thread(_cli, ["accounts", "credentials", *argv])


@dataclass
class Logs:
    raw: list[dict[str, Any]] = field(default_factory=list)  # event dicts before scrubbing
    rendered: io.StringIO = field(default_factory=io.StringIO)  # the JSON lines, as shipped


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Logs]:
    """The repo's own JSON logging, into a buffer, with a spy ahead of the scrubber.

    `main` does not configure logging yet; unconfigured structlog prints to stdout, which would
    mix log lines into the commands' output.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_config = structlog.get_config()
    captured = Logs()
    configure_logging("json")
    root.handlers[0].setStream(captured.rendered)  # type: ignore[attr-defined]

    def spy(_logger: Any, _name: str, event: Any) -> Any:
        captured.raw.append(dict(event))
        return event

    structlog.configure(processors=[spy, *structlog.get_config()["processors"]])
    # A fresh proxy: the logger cached under this configuration dies with the test.
    monkeypatch.setattr(
        credentials_module, "log", structlog.get_logger(credentials_module.__name__)
    )
    yield captured
    structlog.configure(**saved_config)
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def _temporary_password(out: str) -> str:
    match = re.search(r"^temporary password: (\S+)$", out, re.MULTILINE)
    assert match is not None, out
    return match.group(1)


async def test_cli_issue_login_change(
    conn: Conn,
    account: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logs: Logs,
) -> None:
    assert await cli(monkeypatch, ["issue", account, "--ttl-hours", "2"]) == 0
    out = capsys.readouterr().out
    temp = _temporary_password(out)
    assert f"username:           billing-{account}\n" in out and "shown once" in out
    row = await stored(conn, account)
    assert row["expires_at"] - row["password_set_at"] == timedelta(hours=2)

    assert await cli(monkeypatch, ["login", account], temp + "\n") == 0
    out = capsys.readouterr().out
    assert "must_change_password: true" in out and temp not in out
    assert await cli(monkeypatch, ["login", account], temp + "\n") == 1
    err = capsys.readouterr().err.splitlines()
    assert "contacto-billing: error: temporary password already used; " in err[-1]

    refusals = [
        (f"{temp}\nshort-1A\nshort-1A\n", "weak password: must be at least 12 characters"),
        (f"{temp}\n{NEW}\n{NEW}!\n", "new password and confirmation do not match"),
        (f"nope-nope-nope-1\n{NEW}\n{NEW}\n", "wrong password"),
        (f"{temp}\n{NEW}\n", "expected 3 line(s) on stdin, got 2"),
    ]
    for stdin, reason in refusals:
        assert await cli(monkeypatch, ["change-password", account], stdin) == 1
        assert capsys.readouterr().err.splitlines()[-1] == f"contacto-billing: error: {reason}"

    assert await cli(monkeypatch, ["change-password", account], f"{temp}\n{NEW}\n{NEW}\n") == 0
    assert capsys.readouterr().out == f"password changed for account {account}\n"
    assert await cli(monkeypatch, ["login", account, "--json"], NEW + "\r\n") == 0
    assert json.loads(capsys.readouterr().out) == {
        "account_id": account, "username": f"billing-{account}", "must_change_password": False,
    }  # fmt: skip

    assert await cli(monkeypatch, ["issue", account, "--json"]) == 0
    issued = json.loads(capsys.readouterr().out)
    assert issued["replaced"] == "password" and len(issued["temporary_password"]) == 20
    assert await cli(monkeypatch, ["issue", account]) == 0
    assert "replaced the previous temporary credential" in capsys.readouterr().out


async def test_cli_refusals_and_arguments(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logs: Logs,
) -> None:
    assert await cli(monkeypatch, ["issue", "no-such-account"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "contacto-billing: error: unknown account 'no-such-account'"
    )
    assert await cli(monkeypatch, ["login", "no-such-account"], "") == 1
    assert "expected 1 line(s) on stdin, got 0" in capsys.readouterr().err
    for argv in (["issue", "a", "--ttl-hours", "0"], ["issue", "a", "--ttl-hours", "169"],
                 ["login", "a", "a-password-as-an-argument"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            _cli(["accounts", "credentials", *argv])
        assert exit_info.value.code == 2


async def test_cli_prompts_without_echo_on_a_terminal(
    conn: Conn,
    account: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logs: Logs,
) -> None:
    issued = await issue_temporary(conn, account)
    prompts: list[str] = []
    answers = iter([issued.password, NEW, NEW])

    def fake_getpass(prompt: str = "Password: ") -> str:
        prompts.append(prompt)
        return next(answers)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr(sys, "stdin", Terminal("never read\n"))
    assert (
        await asyncio.to_thread(_cli, ["accounts", "credentials", "change-password", account]) == 0
    )
    assert prompts == ["Current password: ", "New password: ", "Confirm new password: "]
    assert sys.stdin.read() == "never read\n"
    assert capsys.readouterr().out == f"password changed for account {account}\n"


async def test_no_secret_reaches_logs_or_output_but_the_one_time_display(
    conn: Conn,
    account: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logs: Logs,
) -> None:
    assert await cli(monkeypatch, ["issue", account]) == 0
    issue_out = capsys.readouterr()
    temp = _temporary_password(issue_out.out)
    temp_hash = (await stored(conn, account))["password_hash"]
    steps = [
        (["login", account], "wrong-guess-123\n"),
        (["login", account], f"{temp}\n"),
        (["login", account], f"{temp}\n"),
        (["change-password", account], f"{temp}\n{NEW}\n{NEW}x\n"),
        (["change-password", account], f"{temp}\n{NEW}\n{NEW}\n"),
        (["login", account, "--json"], f"{NEW}\n"),
    ]
    shown: list[str] = []
    for argv, stdin in steps:
        await cli(monkeypatch, argv, stdin)
        captured = capsys.readouterr()
        shown += [captured.out, captured.err]
    new_hash = (await stored(conn, account))["password_hash"]

    assert issue_out.out.count(temp) == 1 and temp not in issue_out.err
    secrets = [
        temp,
        NEW,
        "wrong-guess-123",
        f"{NEW}x",
        *temp_hash.split("$")[4:],
        *new_hash.split("$")[4:],
    ]
    for secret in secrets:
        assert all(secret not in text for text in shown)
        assert secret not in repr(logs.raw)
        assert secret not in logs.rendered.getvalue()
    events = [e for e in logs.raw if e["event"].startswith("credentials.")]
    assert [e["event"] for e in events] == [
        "credentials.issued", "credentials.login_refused", "credentials.logged_in",
        "credentials.login_refused", "credentials.change_refused", "credentials.password_changed",
        "credentials.logged_in",
    ]  # fmt: skip
    assert all(e["account_id"] == account for e in events)
    assert all(set(e) <= {"event", "account_id", "reason", "replaced", "temporary"} for e in events)
    rendered = [json.loads(line) for line in logs.rendered.getvalue().splitlines()]
    assert [r["event"] for r in rendered if r["event"].startswith("credentials.")] == [
        e["event"] for e in events
    ]
