"""Bearer tokens of the account API: issued once, stored hashed, listed, revoked.

A token reads `cbt_<selector>_<secret>`:

* the selector (8 random bytes, 16 hex digits) is public: it finds the row, and it is what
  logs may name;
* the secret (32 random bytes, 43 base64url characters) is shown once, when the token is
  created, and only its SHA-256 is stored. A 256-bit random value cannot be guessed, so a
  plain digest is as strong as the secret itself and no slow password hash is needed (that is
  for human-chosen passwords: common/credentials/passwords.py).

Checking a token: its shape first (no database call for a malformed one), then the row by
selector, then the digest of the presented secret against the stored one with
`hmac.compare_digest`, in constant time. Unknown, wrong and revoked tokens are refused alike
towards the caller; the reason is kept for the log (never the token).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Final

import asyncpg
import structlog

log = structlog.get_logger(__name__)

TOKEN_PREFIX: Final = "cbt_"
SELECTOR_BYTES: Final = 8
SECRET_BYTES: Final = 32
# What a token looks like; also what the log scrubber recognises (common/logging.py).
TOKEN_PATTERN: Final = r"cbt_[0-9a-f]{16}_[A-Za-z0-9_-]{43}"
_TOKEN_RE: Final = re.compile(r"cbt_(?P<selector>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})")
NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # the table's CHECK
_NAME_RE: Final = re.compile(NAME_PATTERN)

SCOPE_ACCOUNTS_READ: Final = "accounts:read"
SCOPE_USAGE_WRITE: Final = "usage:write"
SCOPES: Final = (SCOPE_ACCOUNTS_READ, SCOPE_USAGE_WRITE)
# last_used_at is written at most this often per token: not one write per request.
TOUCH_EVERY_S: Final = 60


class TokenError(Exception):
    """A refusal of `api-tokens create|revoke` with a one-line reason."""


class Refusal(Enum):
    """Why a presented token was refused (for logs; the caller is told less)."""

    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    WRONG_SECRET = "wrong_secret"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    name: str
    token: str = field(repr=False)  # shown once; an accidental repr() or log never has it
    selector: str
    scopes: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    selector: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def status(self) -> str:
        return "revoked" if self.revoked_at is not None else "active"


@dataclass(frozen=True, slots=True)
class Caller:
    """Whose token a request carried."""

    token_id: int
    name: str
    selector: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Authentication:
    caller: Caller | None
    refusal: Refusal | None = None
    name: str | None = None  # the token's name when the selector matched one


# --- pure ------------------------------------------------------------------------------------


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def generate() -> tuple[str, str, bytes]:
    """A new token: (token, selector, digest of its secret)."""
    selector = secrets.token_hex(SELECTOR_BYTES)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")
    return f"{TOKEN_PREFIX}{selector}_{secret}", selector, digest(secret)


def parse_token(text: str) -> tuple[str, str] | None:
    """(selector, secret) of a well-formed token, else None."""
    match = _TOKEN_RE.fullmatch(text)
    if match is None:
        return None
    return match["selector"], match["secret"]


def check_name(name: str) -> str:
    if _NAME_RE.fullmatch(name) is None:
        raise TokenError(
            f"invalid token name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(scopes))
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown:
        raise TokenError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not chosen:
        raise TokenError("a token needs at least one scope")
    return tuple(s for s in SCOPES if s in chosen)


# Compared with when the selector is unknown, so that both paths hash and compare.
_NO_DIGEST: Final = bytes(32)


def verify(secret: str, stored: bytes | None) -> bool:
    return hmac.compare_digest(digest(secret), stored if stored is not None else _NO_DIGEST)


# --- SQL -------------------------------------------------------------------------------------

INSERT_TOKEN = """
INSERT INTO api_tokens (name, selector, secret_hash, scopes)
VALUES ($1, $2, $3, $4::text[])
ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING
RETURNING created_at
"""
LIST_TOKENS = """
SELECT name, selector, scopes, created_at, last_used_at, revoked_at
FROM api_tokens
ORDER BY revoked_at IS NOT NULL, name, id
"""
REVOKE_TOKEN = """
UPDATE api_tokens SET revoked_at = now()
WHERE name = $1 AND revoked_at IS NULL
RETURNING name, selector, scopes, created_at, last_used_at, revoked_at
"""
# The web workers LISTEN here (web/token_cache.py); the payload is the revoked selector.
TOKENS_CHANNEL: Final = "contacto_api_tokens"
NOTIFY_REVOKED = "SELECT pg_notify($1, $2)"
FIND_TOKEN = f"""
SELECT id, name, secret_hash, scopes, revoked_at,
       last_used_at IS NULL OR last_used_at < now() - interval '{TOUCH_EVERY_S} seconds'
           AS touch_due
FROM api_tokens WHERE selector = $1
"""
TOUCH_TOKEN = f"""
UPDATE api_tokens SET last_used_at = now()
WHERE id = $1
  AND (last_used_at IS NULL OR last_used_at < now() - interval '{TOUCH_EVERY_S} seconds')
"""


# --- service ---------------------------------------------------------------------------------


async def create_token(
    conn: asyncpg.Connection[Any], name: str, scopes: Sequence[str] = SCOPES
) -> IssuedToken:
    """A new live token named `name`; refused while another live token has that name."""
    name, chosen = check_name(name), check_scopes(scopes)
    token, selector, secret_digest = generate()
    created_at: datetime | None = await conn.fetchval(
        INSERT_TOKEN, name, selector, secret_digest, list(chosen)
    )
    if created_at is None:
        raise TokenError(
            f"a live token named {name!r} exists; revoke it first or pick another name"
        )
    log.info("api_token.created", name=name, selector=selector, scopes=list(chosen))
    return IssuedToken(name, token, selector, chosen, created_at)


async def list_tokens(conn: asyncpg.Connection[Any]) -> list[TokenInfo]:
    """Every token, live ones first; never a secret (none is stored)."""
    return [_info(row) for row in await conn.fetch(LIST_TOKENS)]


async def revoke_token(conn: asyncpg.Connection[Any], name: str) -> TokenInfo:
    """Revoke the live token named `name`: refused from its next request on (the NOTIFY, sent
    at commit, tells the web workers to forget the tokens they remembered: web/token_cache.py)."""
    async with conn.transaction():
        row = await conn.fetchrow(REVOKE_TOKEN, name)
        if row is not None:
            await conn.execute(NOTIFY_REVOKED, TOKENS_CHANNEL, row["selector"])
    if row is None:
        raise TokenError(f"no live token named {name!r}")
    log.info("api_token.revoked", name=name, selector=row["selector"])
    return _info(row)


async def authenticate(conn: asyncpg.Connection[Any], presented: str) -> Authentication:
    """Who `presented` (the text after `Bearer `) belongs to, or why it is refused."""
    parsed = parse_token(presented)
    if parsed is None:
        return Authentication(None, Refusal.MALFORMED)
    selector, secret = parsed
    row = await conn.fetchrow(FIND_TOKEN, selector)
    if not verify(secret, row["secret_hash"] if row is not None else None) or row is None:
        refusal = Refusal.UNKNOWN if row is None else Refusal.WRONG_SECRET
        return Authentication(None, refusal, row["name"] if row is not None else None)
    if row["revoked_at"] is not None:
        return Authentication(None, Refusal.REVOKED, row["name"])
    if row["touch_due"]:
        await conn.execute(TOUCH_TOKEN, row["id"])
    caller = Caller(row["id"], row["name"], selector, frozenset(row["scopes"]))
    return Authentication(caller, name=row["name"])


def _info(row: asyncpg.Record) -> TokenInfo:
    return TokenInfo(
        row["name"],
        row["selector"],
        tuple(row["scopes"]),
        row["created_at"],
        row["last_used_at"],
        row["revoked_at"],
    )
