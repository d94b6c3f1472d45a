"""`contacto-billing api-tokens create|list|revoke`: shown once, stored hashed, revocable."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest

from common.cli.main import main
from common.credentials.tokens import parse_token
from tests.support.factories import new_id


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def arun(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`run` from an async test: the command runs its own event loop, in a thread."""
    return await asyncio.to_thread(run, capsys, *argv)


async def stored(conn: Any, selector: str) -> Any:
    return await conn.fetchrow("SELECT * FROM api_tokens WHERE selector = $1", selector)


async def test_create_shows_the_token_once_and_stores_only_its_digest(
    capsys: pytest.CaptureFixture[str], conn: Any
) -> None:
    name = new_id("upstream")
    code, out, err = await arun(capsys, "api-tokens", "create", name, "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["name"] == name and created["scopes"] == ["accounts:read", "usage:write"]
    parsed = parse_token(created["token"])
    assert parsed is not None and parsed[0] == created["selector"]
    row = await stored(conn, created["selector"])
    assert bytes(row["secret_hash"]) == hashlib.sha256(parsed[1].encode()).digest()
    # Nothing else of the token is kept anywhere in the row.
    assert parsed[1] not in json.dumps({k: str(v) for k, v in dict(row).items()})
    code, out, _ = await arun(capsys, "api-tokens", "list", "--json")
    listed = next(t for t in json.loads(out) if t["name"] == name)
    assert "token" not in listed and listed["status"] == "active"
    assert parsed[1] not in out


async def test_a_live_name_is_unique_and_free_again_once_revoked(
    capsys: pytest.CaptureFixture[str], conn: Any
) -> None:
    name = new_id("ops")
    assert (await arun(capsys, "api-tokens", "create", name, "--scope", "accounts:read"))[0] == 0
    code, _, err = await arun(capsys, "api-tokens", "create", name)
    assert code == 1 and "a live token named" in err
    code, out, err = await arun(capsys, "api-tokens", "revoke", name)
    assert code == 0 and "revoked token" in out, err
    code, _, err = await arun(capsys, "api-tokens", "revoke", name)
    assert code == 1 and "no live token named" in err
    code, out, _ = await arun(capsys, "api-tokens", "create", name, "--json")
    assert code == 0
    code, out, _ = await arun(capsys, "api-tokens", "list", "--json")
    mine = [t for t in json.loads(out) if t["name"] == name]
    assert [t["status"] for t in mine] == ["active", "revoked"]
    assert mine[1]["scopes"] == ["accounts:read"] and mine[1]["revoked_at"]


@pytest.mark.parametrize("name", ["", "-dash-first", "has space", "x" * 65, "semi;colon"])
def test_names_are_checked(capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, _, err = run(capsys, "api-tokens", "create", "--", name)
    assert code == 1 and "invalid token name" in err


def test_the_plain_listing(capsys: pytest.CaptureFixture[str]) -> None:
    name = new_id("plain")
    code, out, _ = run(capsys, "api-tokens", "create", name)
    assert code == 0 and "shown once" in out
    token = next(line.split()[-1] for line in out.splitlines() if line.startswith("token:"))
    code, out, _ = run(capsys, "api-tokens", "list")
    assert code == 0 and name in out and token not in out
    assert f"cbt_{token.split('_')[1]}_…" in out
