"""A Stripe double: an aiohttp reverse proxy in front of localstripe that answers like Stripe where
localstripe does not.

localstripe (1.15) ignores Idempotency-Key, cannot filter PaymentIntents by customer or creation
time, and lets a detached PaymentMethod be charged. The double adds, in front of it:

- Stripe's idempotency layer on POST (docs.stripe.com/api/idempotent_requests): the first
  response to a key is saved and replayed for the same key and the same parameters, error
  responses included (a card error is replayed, not retried), with `Idempotent-Replayed: true`;
  the same key with other parameters gets 400 `idempotency_error`; a key whose first request is
  still running gets 409 `idempotency_key_in_use`. Like Stripe, nothing is saved for a request
  refused before it executes (validation 400/404, 401, 409, 429).
- Pruning on demand: `forget_key(key)` / `forget_keys()` do what Stripe does to keys at least
  24 hours old, after which the key is a new request.
- `GET /v1/payment_intents` with Stripe's filters: `customer`, `created` (`created=<ts>` or
  `created[gt|gte|lt|lte]=<ts>`), `limit` (1 to 100, default 10), `starting_after`,
  `ending_before`; newest first, like Stripe. (The search endpoint is not implemented: the
  gateway uses the list, since search lags behind writes.)
- Stripe's answers for payment methods: a PaymentIntent with a detached method gets Stripe's 400
  (no code, only the message), attaching a detached method is refused, and an unknown method or
  customer gets 400 `resource_missing` naming the parameter (localstripe says a bare 404).
- Faults on demand, for the next matching requests (`fail_next`): `lost_response` (forwarded and
  saved under its key, then the connection is closed without an answer), `drop_request` (closed
  without forwarding: nothing happened), `server_error` (500) and `rate_limit` (429), both
  answered without forwarding or saving, like failures before Stripe executes anything.

Everything else is forwarded to localstripe unchanged. Keys are not scoped per API key (tests use
one). Run one per test module with `run_stripe_double(localstripe.api_base)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

import pytest
from aiohttp import ClientSession, ClientTimeout, web

from common.gateway.stripe_gateway import StripeGateway
from tests.support.localstripe import (
    Localstripe,
    LocalstripeUnavailable,
    available,
    run_localstripe,
)

Fault = Literal["lost_response", "drop_request", "server_error", "rate_limit"]
FAULTS: Final = ("lost_response", "drop_request", "server_error", "rate_limit")

# Stripe's own messages, so that code matching them is tested against the real words.
DETACHED_AT_CONFIRM: Final = (
    "The provided PaymentMethod was previously used with a PaymentIntent without Customer "
    "attachment, shared with a connected account without Customer attachment, or was detached "
    "from a Customer. It may not be used again. To use a PaymentMethod multiple times, you must "
    "attach it to a Customer first."
)
DETACHED_AT_ATTACH: Final = (
    "This PaymentMethod was previously used without being attached to a Customer or was "
    "detached from a Customer, and may not be used again."
)
_LIST_PARAMS: Final = frozenset(
    {"customer", "created", "limit", "starting_after", "ending_before", "expand"}
)
# Headers that belong to one hop, never forwarded either way.
_HOP: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}
)


@dataclass(frozen=True, slots=True)
class Saved:
    fingerprint: str
    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the double received, and what it did with it."""

    method: str
    path: str
    idempotency_key: str | None
    outcome: str  # forwarded, replayed, idempotency_error, in_use, refused, listed, fault:<name>


@dataclass(slots=True)
class _PendingFault:
    fault: Fault
    method: str | None
    path: str | None

    def matches(self, request: web.Request) -> bool:
        return (self.method is None or request.method == self.method) and (
            self.path is None or request.path == self.path
        )


def _error(status: int, **error: Any) -> web.Response:
    return web.json_response({"error": error}, status=status)


def _fingerprint(method: str, path: str, body: bytes) -> str:
    # Stripe compares the parameters, not their order in the body.
    params = sorted(parse_qsl(body.decode(), keep_blank_values=True))
    return hashlib.sha256(json.dumps([method, path, params]).encode()).hexdigest()


def _saves(status: int) -> bool:
    # Saved once the endpoint began executing: successes, card errors (402), server errors.
    # Refusals before execution (validation, auth, conflicts, rate limits) are not saved.
    return status < 400 or status == 402 or status >= 500


@dataclass
class StripeDouble:
    upstream: str
    api_base: str = ""
    # Seconds each forwarded POST waits before reaching localstripe: widens the window in which
    # a second request with the same key finds the first one in progress.
    forward_delay_s: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    _saved: dict[str, Saved] = field(default_factory=dict)
    _in_progress: set[str] = field(default_factory=set)
    _faults: list[_PendingFault] = field(default_factory=list)
    _detached: set[str] = field(default_factory=set)
    _session: ClientSession | None = None

    # --- what tests call --------------------------------------------------------------------

    def forget_key(self, idempotency_key: str) -> None:
        """Prune one key, as Stripe does once it is 24 hours old."""
        self._saved.pop(idempotency_key, None)

    def forget_keys(self) -> None:
        """Prune every key."""
        self._saved.clear()

    def reset(self) -> None:
        """Between tests: no pending faults, no delay, nothing seen (saved keys stay, as at
        Stripe; tests use keys of their own)."""
        self._faults.clear()
        self.forward_delay_s = 0.0
        self.seen.clear()

    def remembers(self, idempotency_key: str) -> bool:
        return idempotency_key in self._saved

    def fail_next(
        self,
        fault: Fault,
        times: int = 1,
        *,
        method: str | None = "POST",
        path: str | None = "/v1/payment_intents",
    ) -> None:
        """The next `times` requests matching `method` and `path` (None: any) fail with `fault`.

        By default only PaymentIntent creation, so that setting up cards is never hit.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")
        self._faults += [_PendingFault(fault, method, path) for _ in range(times)]

    def pending_faults(self) -> int:
        return len(self._faults)

    def outcomes(self, path: str = "/v1/payment_intents", method: str = "POST") -> list[str]:
        return [s.outcome for s in self.seen if s.path == path and s.method == method]

    # --- the server -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        fault = self._take_fault(request)
        if fault is not None and fault.fault != "lost_response":
            self._see(request, key, f"fault:{fault.fault}")
            return self._fail_before_execution(request, fault.fault)
        if request.method == "GET" and request.path == "/v1/payment_intents":
            self._see(request, key, "listed")
            return await self._list_payment_intents(request)
        if key is None:
            response, outcome = await self._execute(request, body), "forwarded"
        else:
            response, outcome = await self._idempotent(request, key, body)
        if fault is not None:  # lost_response: executed (and saved), never answered
            self._see(request, key, f"fault:lost_response ({outcome})")
            return self._hang_up(request)
        self._see(request, key, outcome)
        return response

    def _take_fault(self, request: web.Request) -> _PendingFault | None:
        for i, pending in enumerate(self._faults):
            if pending.matches(request):
                return self._faults.pop(i)
        return None

    def _see(self, request: web.Request, key: str | None, outcome: str) -> None:
        self.seen.append(Seen(request.method, request.path, key, outcome))

    def _fail_before_execution(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault == "drop_request":
            return self._hang_up(request)
        if fault == "rate_limit":
            return _error(
                429,
                type="invalid_request_error",
                code="rate_limit",
                message="Too many requests hit the API too quickly.",
            )
        return _error(500, type="api_error", message="An unknown error occurred (simulated).")

    @staticmethod
    def _hang_up(request: web.Request) -> web.StreamResponse:
        # The client sees the connection close with no response: a lost answer.
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=204)

    async def _idempotent(
        self, request: web.Request, key: str, body: bytes
    ) -> tuple[web.Response, str]:
        fingerprint = _fingerprint(request.method, request.path, body)
        saved = self._saved.get(key)
        if saved is not None:
            if saved.fingerprint != fingerprint:
                return _error(
                    400,
                    type="idempotency_error",
                    message=(
                        "Keys for idempotent requests can only be used with the same parameters "
                        f"they were first used with. Try using a key other than '{key}' if you "
                        "meant to execute a different request."
                    ),
                ), "idempotency_error"
            replay = web.Response(
                status=saved.status,
                body=saved.body,
                content_type=saved.content_type,
                headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
            )
            return replay, "replayed"
        if key in self._in_progress:
            return _error(
                409,
                type="invalid_request_error",
                code="idempotency_key_in_use",
                message=(
                    "There is currently another in-progress request using this Idempotent Key "
                    "(that probably means you submitted twice, and the other request is still "
                    f"going through): {key}. Please try again later."
                ),
            ), "in_use"
        self._in_progress.add(key)
        try:
            response = await self._execute(request, body)
        finally:
            self._in_progress.discard(key)
        assert isinstance(response.body, bytes)
        if _saves(response.status):
            self._saved[key] = Saved(
                fingerprint, response.status, response.body, response.content_type
            )
        return response, "forwarded" if _saves(response.status) else "refused"

    async def _execute(self, request: web.Request, body: bytes) -> web.Response:
        """What Stripe would do with the request, localstripe doing the work."""
        if request.method == "POST" and self.forward_delay_s:
            await asyncio.sleep(self.forward_delay_s)
        refusal = await self._refuse(request, body)
        if refusal is not None:
            return refusal
        status, payload, content_type = await self._forward(request, body)
        parts = request.path.split("/")
        if (
            status == 200
            and request.method == "POST"
            and len(parts) == 5
            and parts[2] == "payment_methods"
            and parts[4] == "detach"
        ):
            self._detached.add(parts[3])
        return web.Response(status=status, body=payload, content_type=content_type)

    async def _refuse(self, request: web.Request, body: bytes) -> web.Response | None:
        """Stripe's refusals that localstripe does not make (400, nothing executed)."""
        parts = request.path.split("/")
        if request.method != "POST":
            return None
        if len(parts) == 5 and parts[2] == "payment_methods" and parts[4] == "attach":
            if parts[3] in self._detached:
                return _error(400, type="invalid_request_error", message=DETACHED_AT_ATTACH)
            return None
        if request.path != "/v1/payment_intents":
            return None
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        pm, customer = form.get("payment_method"), form.get("customer")
        if pm is not None and pm in self._detached:
            # No code and no param: the message is all Stripe says.
            return _error(400, type="invalid_request_error", message=DETACHED_AT_CONFIRM)
        for param, value, kind, path in (
            ("customer", customer, "customer", "customers"),
            ("payment_method", pm, "PaymentMethod", "payment_methods"),
        ):
            # Stripe's shared test methods (pm_card_visa...) exist everywhere; only real ids
            # can be missing.
            if value is None or value.startswith("pm_card_"):
                continue
            status, _, _ = await self._forward_get(request, f"/v1/{path}/{value}")
            if status == 404:
                return _error(
                    400,
                    type="invalid_request_error",
                    code="resource_missing",
                    param=param,
                    message=f"No such {kind}: '{value}'",
                )
        return None

    def _upstream_headers(self, request: web.Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() not in _HOP}

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, bytes, str]:
        assert self._session is not None
        async with self._session.request(
            request.method,
            f"{self.upstream}{request.path_qs}",
            data=body if body else None,
            headers=self._upstream_headers(request),
        ) as upstream:
            payload = await upstream.read()
            return upstream.status, payload, upstream.content_type

    async def _forward_get(self, request: web.Request, path_qs: str) -> tuple[int, bytes, str]:
        assert self._session is not None
        headers = {
            k: v
            for k, v in self._upstream_headers(request).items()
            if k.lower() in ("authorization", "stripe-version")
        }
        async with self._session.get(f"{self.upstream}{path_qs}", headers=headers) as upstream:
            return upstream.status, await upstream.read(), upstream.content_type

    async def _list_payment_intents(self, request: web.Request) -> web.Response:
        query = request.query
        for name in query:
            base = name.split("[", 1)[0]
            if base not in _LIST_PARAMS:
                return _error(
                    400,
                    type="invalid_request_error",
                    code="parameter_unknown",
                    param=name,
                    message=f"Received unknown parameter: {name}",
                )
        try:
            limit = int(query.get("limit", "10"))
            bounds = {
                op: int(query[f"created[{op}]"])
                for op in ("gt", "gte", "lt", "lte")
                if f"created[{op}]" in query
            }
            if "created" in query:
                bounds["gte"] = bounds["lte"] = int(query["created"])
        except ValueError as exc:
            return _error(400, type="invalid_request_error", message=f"Invalid integer: {exc}")
        if not 1 <= limit <= 100:
            return _error(
                400,
                type="invalid_request_error",
                param="limit",
                message="Invalid limit: must be between 1 and 100",
            )
        # localstripe lists everything, oldest first (its store's insertion order).
        status, payload, _ = await self._forward_get(request, "/v1/payment_intents?limit=1000000")
        if status != 200:
            return web.Response(status=status, body=payload, content_type="application/json")
        intents: list[dict[str, Any]] = list(reversed(json.loads(payload)["data"]))
        customer = query.get("customer")
        selected = [
            i
            for i in intents
            if (customer is None or i.get("customer") == customer)
            and all(_created_ok(int(i["created"]), op, ts) for op, ts in bounds.items())
        ]
        page, has_more = _page(
            selected, limit, query.get("starting_after"), query.get("ending_before")
        )
        if page is None:
            cursor = query.get("starting_after") or query.get("ending_before")
            return _error(
                400,
                type="invalid_request_error",
                code="resource_missing",
                message=f"No such payment_intent: '{cursor}'",
            )
        return web.json_response(
            {"object": "list", "url": "/v1/payment_intents", "has_more": has_more, "data": page}
        )


def _created_ok(created: int, op: str, ts: int) -> bool:
    return {
        "gt": created > ts,
        "gte": created >= ts,
        "lt": created < ts,
        "lte": created <= ts,
    }[op]


def _page(
    items: list[dict[str, Any]], limit: int, starting_after: str | None, ending_before: str | None
) -> tuple[list[dict[str, Any]] | None, bool]:
    """Stripe's cursor pagination over a newest-first list; None when the cursor is unknown."""
    ids = [i["id"] for i in items]
    if starting_after is not None:
        if starting_after not in ids:
            return None, False
        rest = items[ids.index(starting_after) + 1 :]
        return rest[:limit], len(rest) > limit
    if ending_before is not None:
        if ending_before not in ids:
            return None, False
        before = items[: ids.index(ending_before)]
        return before[-limit:], len(before) > limit
    return items[:limit], len(items) > limit


@contextlib.asynccontextmanager
async def run_stripe_double(upstream_api_base: str) -> AsyncIterator[StripeDouble]:
    """Serve a double in front of `upstream_api_base` on a free loopback port until exit."""
    double = StripeDouble(upstream=upstream_api_base)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", double.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # Bound here and handed over, so no other process can take the port in between.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    try:
        async with ClientSession(timeout=ClientTimeout(total=30)) as session:
            double._session = session
            await web.SockSite(runner, sock).start()
            double.api_base = f"http://127.0.0.1:{sock.getsockname()[1]}"
            yield double
    finally:
        await runner.cleanup()
        sock.close()


# Fixtures for any test module that talks to Stripe's stand-in: import them by name.
@pytest.fixture(scope="module")
def localstripe() -> Iterator[Localstripe]:
    if not available():
        pytest.skip("localstripe is not installed")
    try:
        with run_localstripe() as server:
            yield server
    except LocalstripeUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
async def localstripe_gateway(localstripe: Localstripe) -> AsyncIterator[StripeGateway]:
    """Our Stripe gateway talking to localstripe directly (no double): for tests where Stripe's
    idempotency and list filters do not matter."""
    gw = StripeGateway(localstripe.api_key, localstripe.api_base, timeout_s=10)
    yield gw
    await gw.close()


@pytest.fixture(scope="module")
async def double(localstripe: Localstripe) -> AsyncIterator[StripeDouble]:
    async with run_stripe_double(localstripe.api_base) as server:
        yield server
