"""Accepted bearer tokens, remembered by each web worker so that the hot path skips a query.

Checking a token is a PostgreSQL round trip on every request: a fifth of what a GET of an
account costs. A token accepted once is remembered for `CONTACTO_WEB_TOKEN_CACHE_S`, and a
revocation still takes effect from the next request: `revoke_token` NOTIFYs `TOKENS_CHANNEL`
in its own transaction (delivered at commit) and every worker LISTENs on a connection of its
own and forgets everything it remembered. The rules that keep that promise:

* Nothing is remembered unless the listening connection is up: a notification sent while it
  was down would be lost. When it drops, everything is forgotten and it reconnects.
* A token checked against the database is remembered only if no notification arrived while
  the check ran (`generation`): the check may have read the token before the revocation.
* Refusals are never remembered: a new token works at once, and no one fills the memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final

import asyncpg
import structlog

from common.credentials.tokens import TOKENS_CHANNEL, Caller

log = structlog.get_logger("web.tokens")

MAX_ENTRIES: Final = 4096
RECONNECT_S: Final = 2.0


class TokenCache:
    def __init__(self, dsn: str, ttl_s: float, *, max_entries: int = MAX_ENTRIES) -> None:
        self._dsn = dsn
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[str, tuple[Caller, float]] = {}
        self._listener: asyncpg.Connection[Any] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._closing = False
        # Bumped by every notification and every loss of the listener.
        self.generation = 0

    @property
    def enabled(self) -> bool:
        return self._ttl_s > 0

    @property
    def listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    def start(self) -> None:
        """Start listening in the background (the web worker serves meanwhile, uncached)."""
        if self.enabled:
            self._keeper = asyncio.create_task(self._keep_listening(), name="token-cache")

    async def close(self) -> None:
        self._closing = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._listener is not None:
            self._listener.terminate()
            self._listener = None

    def get(self, presented: str) -> Caller | None:
        entry = self._entries.get(presented)
        if entry is None:
            return None
        caller, expires_at = entry
        if expires_at < time.monotonic() or not self.listening:
            self._entries.pop(presented, None)
            return None
        return caller

    def put(self, presented: str, caller: Caller, generation: int) -> None:
        """Remember `caller`, checked when `self.generation` was `generation`."""
        if not self.enabled or generation != self.generation or not self.listening:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # many distinct live tokens: rare; start over
        self._entries[presented] = (caller, time.monotonic() + self._ttl_s)

    def forget_all(self) -> None:
        self.generation += 1
        self._entries.clear()

    def _on_notify(self, *_args: object) -> None:
        self.forget_all()
        log.info("api_token.cache_cleared", reason="revoked")

    def _on_lost(self, *_args: object) -> None:
        self.forget_all()

    async def _keep_listening(self) -> None:
        while not self._closing:
            if not self.listening:
                try:
                    conn = await asyncpg.connect(self._dsn, timeout=5)
                    conn.add_termination_listener(self._on_lost)
                    await conn.add_listener(TOKENS_CHANNEL, self._on_notify)
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    log.warning("api_token.cache_listen_failed", error=str(exc))
                else:
                    # Anything remembered before this point could have missed a notification.
                    self.forget_all()
                    self._listener = conn
            await asyncio.sleep(RECONNECT_S)
