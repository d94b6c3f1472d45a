"""`contacto-billing api-tokens create|list|revoke`: bearer tokens of the account API.

The token is printed once, by `create`, and stored only hashed (common/credentials/tokens.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from common.cli._common import CliError, print_json, run, to_jsonable
from common.cli._connect import with_conn
from common.cli._render import render_table, show
from common.credentials.tokens import (
    SCOPES,
    IssuedToken,
    TokenError,
    TokenInfo,
    create_token,
    list_tokens,
    revoke_token,
)

T = TypeVar("T")


def register(sub: Any) -> None:
    tokens = sub.add_parser("api-tokens", help="bearer tokens of the account API (web)")
    tok = tokens.add_subparsers(dest="tokens_cmd", required=True, metavar="ACTION")

    p = tok.add_parser("create", help="create a token; it is shown once, stored only hashed")
    p.add_argument("name", metavar="NAME", help="who holds it, e.g. upstream-platform")
    p.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        dest="scopes",
        help=f"what it may do (repeatable; default: all of {', '.join(SCOPES)})",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_create)

    p = tok.add_parser("list", help="every token, live ones first (never a secret)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)

    p = tok.add_parser("revoke", help="revoke the live token NAME: refused from now on")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_revoke)


def _call(fn: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
    async def guarded(conn: asyncpg.Connection[Any]) -> T:
        try:
            return await fn(conn)
        except TokenError as exc:
            raise CliError(str(exc)) from None

    return run(with_conn(guarded))


def _info_json(info: TokenInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "selector": info.selector,
        "scopes": list(info.scopes),
        "status": info.status,
        "created_at": info.created_at,
        "last_used_at": info.last_used_at,
        "revoked_at": info.revoked_at,
    }


def _create(args: argparse.Namespace) -> int:
    issued: IssuedToken = _call(lambda c: create_token(c, args.name, args.scopes or SCOPES))
    if args.json:
        print_json(
            {
                "name": issued.name,
                "token": issued.token,
                "selector": issued.selector,
                "scopes": list(issued.scopes),
                "created_at": issued.created_at,
            }
        )
        return 0
    print(f"name:    {issued.name}")
    print(f"scopes:  {', '.join(issued.scopes)}")
    print(f"token:   {issued.token}")
    print("shown once, stored only hashed: keep it now (send it as `Authorization: Bearer …`)")
    return 0


def _list(args: argparse.Namespace) -> int:
    infos = _call(list_tokens)
    if args.json:
        print_json([_info_json(i) for i in infos])
        return 0
    if not infos:
        print("no API tokens; create one with `contacto-billing api-tokens create NAME`")
        return 0
    rows = [
        [
            i.name,
            i.status,
            ",".join(i.scopes),
            f"cbt_{i.selector}_…",
            to_jsonable(i.created_at)[:19],
            to_jsonable(i.last_used_at)[:19] if i.last_used_at else "-",
            to_jsonable(i.revoked_at)[:19] if i.revoked_at else "-",
        ]
        for i in infos
    ]
    show(
        render_table(
            ["NAME", "STATUS", "SCOPES", "TOKEN", "CREATED", "LAST USED", "REVOKED"], rows, left=7
        )
    )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    info = _call(lambda c: revoke_token(c, args.name))
    if args.json:
        print_json(_info_json(info))
    else:
        print(f"revoked token {info.name} (cbt_{info.selector}_…): refused from now on")
    return 0
