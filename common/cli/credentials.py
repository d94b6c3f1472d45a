"""`contacto-billing accounts credentials issue|login|change-password ACCOUNT`.

Passwords are read from the terminal without echo (getpass) or, when stdin is not a terminal,
as lines from stdin. Never as arguments: those end up in shell history and in `ps`.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg

from common.cli._common import CliError, print_json, run
from common.cli._connect import with_conn
from common.credentials.logins import (
    MAX_TTL,
    CredentialsError,
    IssuedCredentials,
    LoginResult,
    change_password,
    issue_temporary,
    login,
)

T = TypeVar("T")
MAX_TTL_HOURS = int(MAX_TTL.total_seconds() // 3600)


def register_under_accounts(accounts_sub: Any) -> None:
    parser = accounts_sub.add_parser(
        "credentials", help="billing console login: temporary credentials, login, password"
    )
    sub = parser.add_subparsers(dest="credentials_cmd", required=True, metavar="ACTION")

    p = sub.add_parser(
        "issue", help="issue one-time temporary credentials, replacing any previous ones"
    )
    p.add_argument("account")
    p.add_argument(
        "--ttl-hours",
        type=_ttl_hours,
        default=24,
        help=f"hours the temporary password stays valid (1-{MAX_TTL_HOURS}, default 24)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_issue)

    p = sub.add_parser("login", help="check a password read from the terminal or stdin")
    p.add_argument("account")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_login)

    p = sub.add_parser(
        "change-password",
        help="change the password: current, new and confirmation from the terminal or stdin",
    )
    p.add_argument("account")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_change_password)


def _ttl_hours(text: str) -> int:
    try:
        hours = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of hours: {text!r}") from None
    if not 1 <= hours <= MAX_TTL_HOURS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_TTL_HOURS} hours")
    return hours


def read_secrets(prompts: Sequence[str]) -> list[str]:
    """One secret per prompt: no echo on a terminal, else one line each from stdin."""
    if sys.stdin.isatty():
        try:
            return [getpass.getpass(prompt) for prompt in prompts]
        except EOFError:
            raise CliError("no password entered") from None
    values: list[str] = []
    for _prompt in prompts:
        line = sys.stdin.readline()
        if not line:
            raise CliError(f"expected {len(prompts)} line(s) on stdin, got {len(values)}")
        # Only the line ending goes: spaces are legitimate password characters.
        values.append(line.rstrip("\r\n"))
    return values


def _call(fn: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
    async def guarded(conn: asyncpg.Connection[Any]) -> T:
        try:
            return await fn(conn)
        except CredentialsError as exc:
            raise CliError(str(exc)) from None

    return run(with_conn(guarded))


def _issue(args: argparse.Namespace) -> int:
    ttl = timedelta(hours=args.ttl_hours)
    issued: IssuedCredentials = _call(lambda c: issue_temporary(c, args.account, ttl))
    notice = {
        "temporary": "replaced the previous temporary credential",
        "password": "replaced the password the account had",
        None: None,
    }[issued.replaced]
    if args.json:
        print_json(
            {
                "account_id": issued.account_id,
                "username": issued.username,
                "temporary_password": issued.password,
                "expires_at": issued.expires_at,
                "replaced": issued.replaced,
            }
        )
        return 0
    print(f"username:           {issued.username}")
    print(f"temporary password: {issued.password}")
    print(f"expires at:         {issued.expires_at.isoformat()}")
    print("shown once, not stored: it works for one login, then a new password must be set")
    if notice:
        print(notice)
    return 0


def _login(args: argparse.Namespace) -> int:
    (password,) = read_secrets(["Password: "])
    result: LoginResult = _call(lambda c: login(c, args.account, password))
    if args.json:
        print_json(
            {
                "account_id": result.account_id,
                "username": result.username,
                "must_change_password": result.must_change_password,
            }
        )
        return 0
    print(f"login ok: {result.username} (account {result.account_id})")
    print(f"must_change_password: {'true' if result.must_change_password else 'false'}")
    if result.must_change_password:
        print(f"next: contacto-billing accounts credentials change-password {args.account}")
    return 0


def _change_password(args: argparse.Namespace) -> int:
    old, new, confirm = read_secrets(
        ["Current password: ", "New password: ", "Confirm new password: "]
    )
    _call(lambda c: change_password(c, args.account, old, new, confirm))
    if args.json:
        print_json({"account_id": args.account, "password_changed": True})
    else:
        print(f"password changed for account {args.account}")
    return 0
