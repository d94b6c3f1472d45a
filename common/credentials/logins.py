"""Billing console credentials: one-time temporary passwords, login, password change.

Each check runs in one transaction that holds the account's `billing_logins` row lock, and a
failed attempt is counted in that same transaction; the refusal is raised only after commit so
the count survives. Concurrent guesses therefore queue on the row and each sees the ones
before it. `now` defaults to the database clock (one clock for every host) and is injectable
so expiry and the attempt window can be tested without sleeping.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
import structlog

from common.credentials import passwords

log = structlog.get_logger(__name__)

MAX_FAILED_ATTEMPTS = 5
ATTEMPT_WINDOW = timedelta(minutes=15)
LOCKOUT = timedelta(minutes=15)
DEFAULT_TTL = timedelta(hours=24)
# A "temporary" password that lives for weeks is a permanent one nobody chose.
MAX_TTL = timedelta(days=7)
USERNAME_PREFIX = "billing-"

Replaced = Literal["temporary", "password"]


class CredentialsError(Exception):
    """A refusal: `str(exc)` is the one-line reason for the user, `code` the one for logs."""

    code = "refused"


class UnknownAccountError(CredentialsError):
    code = "unknown_account"


class NoCredentialsError(CredentialsError):
    code = "no_credentials"


class InvalidTtlError(CredentialsError):
    code = "invalid_ttl"


class TooManyAttemptsError(CredentialsError):
    code = "too_many_attempts"


class WrongPasswordError(CredentialsError):
    code = "wrong_password"


class ExpiredError(CredentialsError):
    code = "expired"


class AlreadyUsedError(CredentialsError):
    code = "already_used"


class PasswordMismatchError(CredentialsError):
    code = "mismatch"


class PasswordReuseError(CredentialsError):
    code = "reuse"


class WeakPasswordError(CredentialsError):
    code = "weak"


@dataclass(frozen=True)
class IssuedCredentials:
    account_id: str
    username: str
    password: str = field(repr=False)  # so that an accidental repr() or log never shows it
    expires_at: datetime
    replaced: Replaced | None


@dataclass(frozen=True)
class LoginResult:
    account_id: str
    username: str
    must_change_password: bool


ACCOUNT_CLOCK = "SELECT COALESCE($2::timestamptz, now()) FROM accounts WHERE id = $1"

INSERT_TEMPORARY = """
INSERT INTO billing_logins (account_id, username, password_hash, is_temporary, expires_at,
                            password_set_at)
VALUES ($1, $2, $3, true, $4, $5)
ON CONFLICT (account_id) DO NOTHING
RETURNING true
"""

LOCK_KIND = "SELECT is_temporary FROM billing_logins WHERE account_id = $1 FOR UPDATE"

LOCK_LOGIN = """
SELECT username, password_hash, is_temporary, expires_at, consumed_at, failed_attempts,
       window_started_at, locked_until, COALESCE($2::timestamptz, now()) AS at
FROM billing_logins
WHERE account_id = $1
FOR UPDATE
"""

RECORD_FAILURE = """
UPDATE billing_logins
SET failed_attempts = $2, window_started_at = $3, locked_until = $4, updated_at = now()
WHERE account_id = $1
"""

# A temporary password is consumed; a chosen one may be re-hashed with today's scheme and
# parameters (an scrypt hash becomes argon2id here, at the first login that knows the password).
LOGGED_IN = """
UPDATE billing_logins
SET consumed_at = CASE WHEN is_temporary THEN $2::timestamptz END,
    password_hash = COALESCE($3, password_hash),
    failed_attempts = 0, window_started_at = NULL, locked_until = NULL, updated_at = now()
WHERE account_id = $1
"""

# A new password of either kind starts unused and with a clean attempt count.
SET_PASSWORD = """
UPDATE billing_logins
SET password_hash = $2, is_temporary = $3, expires_at = $4, password_set_at = $5,
    consumed_at = NULL, failed_attempts = 0, window_started_at = NULL, locked_until = NULL,
    updated_at = now()
WHERE account_id = $1
"""


async def issue_temporary(
    conn: asyncpg.Connection[Any],
    account_id: str,
    ttl: timedelta = DEFAULT_TTL,
    now: datetime | None = None,
) -> IssuedCredentials:
    """New one-time password for the account, replacing whatever it had (and saying what)."""
    if not timedelta(0) < ttl <= MAX_TTL:
        raise InvalidTtlError(f"ttl must be positive and at most {MAX_TTL.days} days")
    password = passwords.generate_temporary_password()
    # Hashed before the transaction: no lock is held during the deliberately slow part.
    encoded = await asyncio.to_thread(passwords.hash_password, password)
    username = USERNAME_PREFIX + account_id
    replaced: Replaced | None = None
    async with conn.transaction():
        at = await conn.fetchval(ACCOUNT_CLOCK, account_id, now)
        if at is None:
            raise UnknownAccountError(f"unknown account {account_id!r}")
        expires_at = at + ttl
        inserted = await conn.fetchval(
            INSERT_TEMPORARY, account_id, username, encoded, expires_at, at
        )
        if not inserted:
            # DO NOTHING waited for any concurrent issuer to commit; this lock then sees its row.
            was_temporary = await conn.fetchval(LOCK_KIND, account_id)
            replaced = "temporary" if was_temporary else "password"
            await conn.execute(SET_PASSWORD, account_id, encoded, True, expires_at, at)
    log.info("credentials.issued", account_id=account_id, replaced=replaced)
    return IssuedCredentials(account_id, username, password, expires_at, replaced)


async def login(
    conn: asyncpg.Connection[Any], account_id: str, password: str, now: datetime | None = None
) -> LoginResult:
    """Check a password. A temporary one works once, and then has to be changed."""
    try:
        result = await _login(conn, account_id, password, now)
    except CredentialsError as exc:
        log.info("credentials.login_refused", account_id=account_id, reason=exc.code)
        raise
    log.info("credentials.logged_in", account_id=account_id, temporary=result.must_change_password)
    return result


async def change_password(
    conn: asyncpg.Connection[Any],
    account_id: str,
    old: str,
    new: str,
    confirm: str,
    now: datetime | None = None,
) -> None:
    """Replace the password (temporary or not) after checking the current one."""
    try:
        await _change(conn, account_id, old, new, confirm, now)
    except CredentialsError as exc:
        log.info("credentials.change_refused", account_id=account_id, reason=exc.code)
        raise
    log.info("credentials.password_changed", account_id=account_id)


async def _login(
    conn: asyncpg.Connection[Any], account_id: str, password: str, now: datetime | None
) -> LoginResult:
    refusal: CredentialsError | None = None
    async with conn.transaction():
        row = await _lock_login(conn, account_id, now)
        if not await _verify(password, row["password_hash"]):
            refusal = await _record_failure(conn, account_id, row)
        elif row["is_temporary"]:
            refusal = _expired(row) or _used(row)
        if refusal is None:
            rehashed = None
            if not row["is_temporary"] and passwords.needs_rehash(row["password_hash"]):
                rehashed = await asyncio.to_thread(passwords.hash_password, password)
            await conn.execute(LOGGED_IN, account_id, row["at"], rehashed)
    if refusal is not None:
        raise refusal
    return LoginResult(account_id, row["username"], must_change_password=row["is_temporary"])


async def _change(
    conn: asyncpg.Connection[Any],
    account_id: str,
    old: str,
    new: str,
    confirm: str,
    now: datetime | None,
) -> None:
    refusal: CredentialsError | None = None
    async with conn.transaction():
        row = await _lock_login(conn, account_id, now)
        if not await _verify(old, row["password_hash"]):
            refusal = await _record_failure(conn, account_id, row)
        else:
            # A consumed temporary password is still the "old" one here: logging in with it
            # is exactly what leads to this change. Only its expiry ends that.
            refusal = _expired(row) if row["is_temporary"] else None
            refusal = refusal or _new_password_refusal(row, account_id, old, new, confirm)
        if refusal is None:
            encoded = await asyncio.to_thread(passwords.hash_password, new)
            await conn.execute(SET_PASSWORD, account_id, encoded, False, None, row["at"])
    if refusal is not None:
        raise refusal


async def _lock_login(
    conn: asyncpg.Connection[Any], account_id: str, now: datetime | None
) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(LOCK_LOGIN, account_id, now)
    if row is None:
        if await conn.fetchval(ACCOUNT_CLOCK, account_id, now) is None:
            raise UnknownAccountError(f"unknown account {account_id!r}")
        raise NoCredentialsError(
            f"no billing credentials issued for account {account_id!r}; support must issue them"
        )
    locked_until: datetime | None = row["locked_until"]
    if locked_until is not None and row["at"] < locked_until:
        # Refused before the password is even looked at, and not counted: a locked account
        # gives no oracle, and the lock does not stretch while someone keeps knocking.
        minutes = max(1, math.ceil((locked_until - row["at"]).total_seconds() / 60))
        unit = "minute" if minutes == 1 else "minutes"
        raise TooManyAttemptsError(f"too many attempts, try again in {minutes} {unit}")
    return row


async def _verify(password: str, encoded: str) -> bool:
    # argon2 and hashlib.scrypt release the GIL: other connections' work goes on meanwhile.
    return await asyncio.to_thread(passwords.verify_password, password, encoded)


async def _record_failure(
    conn: asyncpg.Connection[Any], account_id: str, row: asyncpg.Record
) -> CredentialsError:
    at: datetime = row["at"]
    started: datetime | None = row["window_started_at"]
    if started is None or at >= started + ATTEMPT_WINDOW:
        attempts, started = 1, at
    else:
        attempts = row["failed_attempts"] + 1
    locked_until = at + LOCKOUT if attempts >= MAX_FAILED_ATTEMPTS else None
    await conn.execute(RECORD_FAILURE, account_id, attempts, started, locked_until)
    if locked_until is not None:
        log.warning("credentials.locked", account_id=account_id, until=locked_until.isoformat())
    return WrongPasswordError("wrong password")


def _expired(row: asyncpg.Record) -> CredentialsError | None:
    if row["at"] >= row["expires_at"]:
        return ExpiredError("temporary password expired; support must issue a new one")
    return None


def _used(row: asyncpg.Record) -> CredentialsError | None:
    if row["consumed_at"] is not None:
        return AlreadyUsedError(
            "temporary password already used; set a new password with change-password"
        )
    return None


def _new_password_refusal(
    row: asyncpg.Record, account_id: str, old: str, new: str, confirm: str
) -> CredentialsError | None:
    if not passwords.same_password(new, confirm):
        return PasswordMismatchError("new password and confirmation do not match")
    # `old` has just been verified against the stored hash, so comparing with it is comparing
    # with the current (possibly temporary) password, without a second scrypt.
    if passwords.same_password(new, old):
        if row["is_temporary"]:
            return PasswordReuseError("new password must not reuse the temporary password")
        return PasswordReuseError("new password must differ from the current password")
    violation = passwords.policy_violation(new, account_id=account_id, username=row["username"])
    if violation is not None:
        return WeakPasswordError(f"weak password: {violation}")
    return None
