"""`contacto-billing accounts card|auto-recharge|recharge|max-recharge`."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from common.accounts.store import AccountError
from common.cli._common import CliError, SetupError, amount_arg, print_json, run, to_jsonable
from common.cli._connect import connection
from common.gateway import CardRejected, GatewayConfigError, GatewayError, build_gateway
from common.money import MoneyError
from common.recharge.limits import LimitError
from common.recharge.manual import FINAL_RUN_STATES, request_manual_recharge, run_summary
from common.recharge.settings import attach_card, set_auto_recharge, set_max_recharge
from config.settings import get_settings

REFUSALS = (AccountError, LimitError, MoneyError, CardRejected)


def register_under_accounts(acc: Any) -> None:
    p = acc.add_parser("card", help="put a card on file for recharges")
    p.add_argument("account")
    p.add_argument("--payment-method", required=True, help="e.g. pm_card_visa")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_card)

    p = acc.add_parser("auto-recharge", help="charge R whenever the balance falls below T")
    p.add_argument("account")
    p.add_argument("--balance-amount", type=amount_arg, metavar="T")
    p.add_argument("--recharge-amount", type=amount_arg, metavar="R")
    p.add_argument(
        "--mode",
        choices=("repeat", "single"),
        default="repeat",
        help="repeat: R until >= T (the FAQ); single: one charge of k*R",
    )
    p.add_argument("--off", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_auto_recharge)

    p = acc.add_parser("recharge", help="manual recharge through the charge worker")
    p.add_argument("account")
    p.add_argument("--amount", required=True, type=amount_arg)
    p.add_argument("--wait", action="store_true", help="wait for the result")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait with --wait")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_recharge)

    p = acc.add_parser("max-recharge", help="support: raise one account's maximum recharge")
    p.add_argument("account")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--amount", type=amount_arg)
    group.add_argument("--reset", action="store_true", help="back to MAX_RECHARGE_AMOUNT")
    p.set_defaults(func=_max_recharge)


async def _on_conn(fn: Any) -> Any:
    async with connection() as conn:
        try:
            return await fn(conn)
        except REFUSALS as exc:
            raise CliError(str(exc)) from None
        except asyncpg.UndefinedTableError:
            raise  # no schema: `connection()` tells the operator to migrate
        except asyncpg.PostgresError as exc:
            raise CliError(f"database refused: {exc}") from None


def _card(args: argparse.Namespace) -> int:
    settings = get_settings()

    async def go(conn: asyncpg.Connection[Any]) -> Any:
        redis = aioredis.Redis.from_url(settings.redis_url)
        try:
            gw = build_gateway(settings, redis)
        except GatewayConfigError as exc:  # PAYMENT_GATEWAY=stripe without a key
            await redis.aclose()
            raise SetupError(str(exc)) from None
        try:
            return await attach_card(conn, gw, args.account, args.payment_method, settings)
        except GatewayError as exc:
            if isinstance(exc, CardRejected):
                raise
            raise CliError(f"payment gateway: {exc}") from None
        finally:
            await gw.close()
            await redis.aclose()

    result = run(_on_conn(go))
    out = {
        "account_id": args.account,
        "customer_id": result.customer_id,
        "payment_method": result.payment_method,
        "attempt_run_id": result.attempt_run_id,
    }
    if args.json:
        print_json(out)
    else:
        print(
            f"card {result.payment_method} on file for {args.account}"
            + (
                f"; recharge attempt started (run {result.attempt_run_id})"
                if result.attempt_run_id
                else ""
            )
        )
    return 0


def _auto_recharge(args: argparse.Namespace) -> int:
    if args.off == (args.balance_amount is not None or args.recharge_amount is not None):
        raise CliError("give --balance-amount T and --recharge-amount R, or --off")
    if not args.off and (args.balance_amount is None or args.recharge_amount is None):
        raise CliError("both --balance-amount and --recharge-amount are needed")
    settings = get_settings()
    run_id = run(
        _on_conn(
            lambda c: set_auto_recharge(
                c,
                args.account,
                settings,
                balance_amount=args.balance_amount,
                recharge_amount=args.recharge_amount,
                mode=args.mode,
            )
        )
    )
    out = {
        "account_id": args.account,
        "enabled": not args.off,
        "balance_amount": args.balance_amount,
        "recharge_amount": args.recharge_amount,
        "mode": args.mode,
        "run_started": run_id,
    }
    if args.json:
        print_json(out)
    elif args.off:
        print(f"auto-recharge off for {args.account}")
    else:
        o = to_jsonable(out)
        print(
            f"auto-recharge on for {args.account}: below {o['balance_amount']} charge "
            f"{o['recharge_amount']} ({args.mode})"
            + (f"; balance already below: run {run_id} started" if run_id else "")
        )
    return 0


def _recharge(args: argparse.Namespace) -> int:
    settings = get_settings()
    run_id = run(
        _on_conn(lambda c: request_manual_recharge(c, args.account, args.amount, settings))
    )
    if not args.wait:
        if args.json:
            print_json({"account_id": args.account, "run_id": run_id, "state": "pending"})
        else:
            print(
                f"manual recharge of {to_jsonable(args.amount)} queued for {args.account} "
                f"(run {run_id}); the charge worker will process it"
            )
        return 0
    summary = run(_wait(run_id, args.timeout))
    if args.json:
        print_json(summary)
    else:
        s = to_jsonable(summary)
        codes = ", ".join(c["failure_code"] for c in s["charges"] if c.get("failure_code"))
        print(
            f"run {run_id}: {s['state']}"
            + (f" ({codes})" if codes else "")
            + f"; balance {s['balance']}"
        )
    if summary["state"] not in FINAL_RUN_STATES:
        raise CliError(
            f"run {run_id} still {summary['state']} after {args.timeout:g}s "
            "(is the charge worker running?)"
        )
    return 0 if summary["state"] == "succeeded" else 1


async def _wait(run_id: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    async with connection() as conn:
        while True:
            summary = await run_summary(conn, run_id)
            if summary["state"] in FINAL_RUN_STATES or time.monotonic() > deadline:
                return summary
            await asyncio.sleep(0.2)


def _max_recharge(args: argparse.Namespace) -> int:
    amount = None if args.reset else args.amount
    settings = get_settings()
    run(_on_conn(lambda c: set_max_recharge(c, args.account, amount, settings)))
    print(
        f"maximum recharge for {args.account}: "
        + (to_jsonable(amount) if amount is not None else "back to MAX_RECHARGE_AMOUNT")
    )
    return 0
