"""`contacto-billing accounts …`: create, credit, show (and the recharge settings)."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from common.accounts.store import AccountError
from common.accounts.support import create_account, credit_account, show_account
from common.cli import credentials, recharge
from common.cli._common import CliError, amount_arg, print_json, run, to_jsonable
from common.cli._connect import with_conn
from common.money import MoneyError


def register(sub: Any) -> None:
    accounts = sub.add_parser("accounts", help="accounts and their balances")
    acc = accounts.add_subparsers(dest="accounts_cmd", required=True, metavar="ACTION")

    p = acc.add_parser("create", help="create an account with a zero balance")
    p.add_argument("account")
    p.add_argument("--currency", default="USD")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_create)

    p = acc.add_parser("credit", help="support adjustment: credit the balance, no card")
    p.add_argument("account")
    p.add_argument("--amount", required=True, type=amount_arg)
    p.add_argument("--reason", required=True)
    p.add_argument("--reference", help="idempotency reference: a repeated one credits nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_credit)

    p = acc.add_parser("show", help="balance, settings, tier and charges")
    p.add_argument("account")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_show)

    # Actions of their own modules: the recharge settings, then the console credentials.
    recharge.register_under_accounts(acc)
    credentials.register_under_accounts(acc)


def _guard(fn: Any) -> Any:
    async def wrapped(conn: asyncpg.Connection[Any]) -> Any:
        try:
            return await fn(conn)
        except (AccountError, MoneyError) as exc:
            raise CliError(str(exc)) from None

    return wrapped


def _create(args: argparse.Namespace) -> int:
    run(with_conn(_guard(lambda c: create_account(c, args.account, args.currency))))
    if args.json:
        print_json({"account_id": args.account, "currency": args.currency})
    else:
        print(f"created account {args.account} ({args.currency})")
    return 0


def _credit(args: argparse.Namespace) -> int:
    balance, applied = run(
        with_conn(
            _guard(
                lambda c: credit_account(c, args.account, args.amount, args.reason, args.reference)
            )
        )
    )
    if args.json:
        print_json({"account_id": args.account, "balance": balance, "applied": applied})
    elif applied:
        print(
            f"credited {to_jsonable(args.amount)} to {args.account}: balance {to_jsonable(balance)}"
        )
    else:
        print(f"reference {args.reference} was already credited: balance {to_jsonable(balance)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    info = run(with_conn(_guard(lambda c: show_account(c, args.account))))
    if args.json:
        print_json(info)
        return 0
    print(render_account(to_jsonable(info)))
    return 0


def render_account(info: dict[str, Any]) -> str:
    ar = info["auto_recharge"]
    lines = [
        f"account   {info['account_id']} ({info['currency']})  status {info['status']}",
        f"balance   {info['balance']}",
        "auto      "
        + (
            f"below {ar['balance_amount']} charge {ar['recharge_amount']} ({ar['mode']})"
            if ar["enabled"]
            else "off"
        ),
        f"tier      {info['retry_tier']}"
        + (f"  armed at {info['armed_level']}" if info["armed_level"] is not None else ""),
        f"card      {info['payment_method'] or '-'}",
    ]
    if info["runs_in_flight"]:
        lines.append(
            "running   "
            + ", ".join(
                f"run {r['id']} ({r['kind']}, tier {r['tier']})" for r in info["runs_in_flight"]
            )
        )
    if info["charges"]:
        lines.append("charges")
        for c in info["charges"]:
            failure = f" {c['failure_code']}" if c.get("failure_code") else ""
            lines.append(
                f"  {c['created_at'][:19]}  {c['kind']:<6} {c['amount']:>12}  "
                f"{c['status']:<9}{failure}  {c['idempotency_key']}"
            )
    return "\n".join(lines)
