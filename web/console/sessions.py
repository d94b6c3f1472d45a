"""Server-side console sessions in Redis: the cookie carries a random id and nothing else.

A session is a small JSON document under `N:console:session:<id>` that expires after the idle
time (each request that finds it extends it). Its id is 32 random bytes (base64url); a new id
is issued at login and at a password change (`rotate`), so an id planted before login
(session fixation) is worth nothing after it. Every session carries its CSRF token and, once
logged in, the account and the account's session epoch: changing the password bumps the epoch,
which ends every other session of the account at its next request, wherever it lives.

A small store of our own rather than a library: what the console needs (rotation, per-account
revocation, one Redis round trip per request) is a few dozen lines, and the libraries for
Starlette either keep data in the cookie or leave revocation to the application anyway.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Final

import redis.asyncio as aioredis

from common.names import console_epoch_key, console_session_key

SESSION_ID_BYTES: Final = 32
CSRF_BYTES: Final = 32


def _token(nbytes: int) -> str:
    return secrets.token_urlsafe(nbytes)


@dataclass(slots=True)
class Session:
    id: str
    csrf: str = field(repr=False)
    account_id: str | None = None
    must_change_password: bool = False
    epoch: int = 0
    flash: str | None = None

    @property
    def logged_in(self) -> bool:
        return self.account_id is not None


class SessionStore:
    def __init__(self, redis: aioredis.Redis, namespace: str, idle_s: int) -> None:
        self._redis = redis
        self._namespace = namespace
        self._idle_s = idle_s

    def _key(self, session_id: str) -> str:
        return console_session_key(self._namespace, session_id)

    def new(self) -> Session:
        """A fresh anonymous session (saved by the caller, with `save`)."""
        return Session(id=_token(SESSION_ID_BYTES), csrf=_token(CSRF_BYTES))

    async def load(self, session_id: str | None) -> Session | None:
        """The session of this id, if it exists and is still valid for its account."""
        if not session_id or len(session_id) > 64:
            return None
        raw = await self._redis.getex(self._key(session_id), ex=self._idle_s)
        if raw is None:
            return None
        data = json.loads(raw)
        session = Session(id=session_id, **data)
        if session.account_id is not None:
            epoch = await self.epoch(session.account_id)
            if epoch != session.epoch:
                # The password changed since this session logged in: it has ended.
                await self.delete(session)
                return None
        return session

    async def save(self, session: Session) -> None:
        data = asdict(session)
        del data["id"]
        await self._redis.set(self._key(session.id), json.dumps(data), ex=self._idle_s)

    async def delete(self, session: Session) -> None:
        await self._redis.delete(self._key(session.id))

    async def rotate(self, session: Session) -> Session:
        """The same session under a new id and a new CSRF token; the old id is gone."""
        await self.delete(session)
        session.id = _token(SESSION_ID_BYTES)
        session.csrf = _token(CSRF_BYTES)
        await self.save(session)
        return session

    async def epoch(self, account_id: str) -> int:
        raw = await self._redis.get(console_epoch_key(self._namespace, account_id))
        return int(raw) if raw is not None else 0

    async def end_other_sessions(self, account_id: str) -> int:
        """Bump the account's epoch: every session logged in before now ends. Returns the new
        epoch, which the caller's own (rotated) session takes so that it lives on."""
        return int(await self._redis.incr(console_epoch_key(self._namespace, account_id)))
