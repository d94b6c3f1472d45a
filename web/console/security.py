"""The console's protections that are not the session itself: CSRF tokens, the per-address
login limit, and the response headers of every console page."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from functools import partial
from typing import Final

import redis.asyncio as aioredis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.credentials.logins import LOCKOUT, MAX_FAILED_ATTEMPTS
from common.names import console_login_failures_key, console_unknown_user_failures_key

CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "x-csrf-token"
# The API and the probes answer JSON to machines: these headers are for pages a browser shows.
_NOT_CONSOLE: Final = ("/v1/", "/healthz", "/readyz", "/openapi.json")


def csrf_ok(expected: str, presented: str | None) -> bool:
    """The synchronizer token check: the form's (or header's) token is the session's."""
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())


NONE: Final = "'none'"


def origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def content_security_policy(stripe_js_url: str | None) -> str:
    """`'self'` only; with Stripe, what Stripe's CSP guide lists for Stripe.js (its script,
    its frames, its API), and the origin Stripe.js is served from when that is another."""
    scripts = frames = connect = ""
    if stripe_js_url is not None:
        js = origin(stripe_js_url)
        extra = "" if js == "https://js.stripe.com" else f" {js}"
        scripts = f" https://js.stripe.com{extra}"
        frames = f"https://js.stripe.com https://hooks.stripe.com{extra}"
        connect = f" https://api.stripe.com{extra}"
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'self'{scripts}",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src 'self'{connect}",
            f"frame-src {frames or NONE}",
            "form-action 'self'",
            "base-uri 'none'",
            # Nobody may frame a page that moves money (clickjacking).
            "frame-ancestors 'none'",
        )
    )


class ConsoleHeaders:
    """Pure ASGI: the security headers on every console response (pages, redirects, JSON)."""

    def __init__(self, app: ASGIApp, *, stripe_js_url: str | None) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", content_security_policy(stripe_js_url).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"same-origin"),
            # Balances and CSRF tokens must not sit in a shared or back-button cache.
            (b"cache-control", b"no-store"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_NOT_CONSOLE):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", ())}
                extra = [h for h in self.headers if h[0] not in names]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


class FailureLimit:
    """Failed logins per subject in a fixed window (a Redis counter that expires)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        key: Callable[[str], str],
        max_failures: int,
        window_s: int,
    ) -> None:
        self._redis = redis
        self._key = key
        self.max_failures = max_failures
        self.window_s = window_s

    async def blocked(self, subject: str) -> bool:
        count = await self._redis.get(self._key(subject))
        return count is not None and int(count) >= self.max_failures

    async def failed(self, subject: str) -> None:
        key = self._key(subject)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            # NX: the window starts at the first failure and is not stretched by later ones.
            pipe.expire(key, self.window_s, nx=True)
            await pipe.execute()


def address_limit(
    redis: aioredis.Redis, namespace: str, max_failures: int, window_s: int
) -> FailureLimit:
    """Failed logins of one client address, whatever usernames it tries."""
    return FailureLimit(
        redis, partial(console_login_failures_key, namespace), max_failures, window_s
    )


def unknown_username_limit(redis: aioredis.Redis, namespace: str) -> FailureLimit:
    """An unknown username "locks" after as many failures as a real account does, for as long:
    otherwise the lockout's answer would tell which usernames exist."""

    def key(username: str) -> str:
        digest = hashlib.sha256(username.casefold().encode()).hexdigest()
        return console_unknown_user_failures_key(namespace, digest)

    return FailureLimit(redis, key, MAX_FAILED_ATTEMPTS, int(LOCKOUT.total_seconds()))
