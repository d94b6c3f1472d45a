"""A payment gateway simulated in Redis, with Stripe's idempotency semantics and injectable faults.

State lives in Redis under `prefix`, so it outlives a SIGKILLed worker and is shared by every
worker process: a redelivered message that replays an idempotency key sees what the first
process recorded. Keys:

    <prefix>:faults        list, LPOPped at the start of every charge (see FAULTS)
    <prefix>:find_faults   list, LPOPped at the start of every find_charge (see FIND_FAULTS)
    <prefix>:idem:<key>    the stored result of the first execution of an idempotency key; Stripe
                           prunes these after 24 h, forget_key() does it on demand
    <prefix>:lock:<key>    short-lived in-progress marker (SET NX PX)
    <prefix>:executed:<key> every execution of the key, oldest first, never pruned: what the
                           PaymentIntents carrying the key in their metadata are at Stripe
    <prefix>:charges       every executed charge, JSON, oldest first (replays add nothing)
    <prefix>:moved         hash: idempotency key -> number of times money moved (0 or 1)
    <prefix>:detached      set of "<customer>|<payment method>" detached by detach_card()

Amounts follow Stripe's rules (common/gateway/currencies.py): what Stripe would refuse, the
simulator refuses the same way, before any idempotent work.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from decimal import Decimal
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.gateway._simulated_cards import DECLINES_AT_ATTACH, charge_decline
from common.gateway._simulated_scripts import BEGIN, COMMIT, RELEASE
from common.gateway.base import (
    NO_PAYMENT_METHOD,
    AttachedCard,
    CardRejected,
    ChargeFailed,
    ChargeRequest,
    ChargeResult,
    ChargeSucceeded,
    GatewayConfigError,
    TransientGatewayError,
    created_floor,
)
from common.gateway.currencies import charge_refusal, to_gateway_amount

FAULTS: Final = frozenset(
    {
        "timeout",  # TransientGatewayError before anything happens
        "lost_response",  # the charge happens and is recorded, then TransientGatewayError
        "rate_limit",  # TransientGatewayError (429)
        "server_error",  # TransientGatewayError (500)
        "config_error",  # GatewayConfigError, like a revoked API key
        "decline",  # this charge is declined (card_declined) whatever the payment method
        "none",  # this call behaves normally: lets a script fault the second call, not the first
    }
)

# find_charge() has a queue of its own, so that faults meant for charges are never eaten by a
# lookup (and the other way round).
AUTHENTICATION_REQUIRED: Final = "authentication_required"
# How long a completed (simulated) 3-D Secure challenge waits for its charge.
AUTHENTICATED_TTL_S: Final = 900
FIND_FAULTS: Final = frozenset({"timeout", "rate_limit", "server_error", "config_error"})

# Stripe's own words for a PaymentIntent confirmed with a detached PaymentMethod.
DETACHED_MESSAGE: Final = (
    "The provided PaymentMethod was previously used with a PaymentIntent without Customer "
    "attachment, shared with a connected account without Customer attachment, or was detached "
    "from a Customer. It may not be used again."
)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _detached_member(customer_id: str | None, payment_method: str) -> str:
    # "|" appears in neither id; no customer is its own scope ("").
    return f"{customer_id or ''}|{payment_method}"


async def inject_faults(redis: aioredis.Redis, prefix: str, *faults: str) -> None:
    """Queue faults: each charge call, whatever its key, consumes the next one."""
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"unknown simulated faults {unknown}; known: {sorted(FAULTS)}")
    if faults:
        await redis.rpush(f"{prefix}:faults", *faults)


async def inject_find_faults(redis: aioredis.Redis, prefix: str, *faults: str) -> None:
    """Queue faults for find_charge: each call, whatever its key, consumes the next one."""
    unknown = [f for f in faults if f not in FIND_FAULTS]
    if unknown:
        raise ValueError(f"unknown find_charge faults {unknown}; known: {sorted(FIND_FAULTS)}")
    if faults:
        await redis.rpush(f"{prefix}:find_faults", *faults)


def _transient_fault(name: str | None) -> None:
    """Raise what a fault of this name stands for; nothing for None."""
    if name == "timeout":
        raise TransientGatewayError("simulated timeout: no response from the gateway")
    if name == "rate_limit":
        raise TransientGatewayError("simulated rate limit (HTTP 429)")
    if name == "server_error":
        raise TransientGatewayError("simulated server error (HTTP 500)")
    if name == "config_error":
        raise GatewayConfigError("simulated configuration error: invalid API key")


async def delete_state(redis: aioredis.Redis, prefix: str) -> int:
    """Remove every key of this simulator instance (tests); returns how many were deleted."""
    deleted = 0
    batch: list[Any] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await redis.delete(*batch)
            batch.clear()
    if batch:
        deleted += await redis.delete(*batch)
    return deleted


class SimulatedGateway:
    name = "simulated"

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        latency_s: float = 0.0,
        lock_ttl_s: float = 5.0,
        record_ttl_s: int = 0,
        owns_redis: bool = False,
    ) -> None:
        """`latency_s` simulates the gateway's processing time while the key is in progress.

        `record_ttl_s` = 0 keeps idempotency records forever (stricter than Stripe's 24 h, so
        a late replay can never charge twice here). `owns_redis`: close() closes the client.
        """
        self._redis = redis
        self._owns_redis = owns_redis
        self._prefix = prefix
        self._latency_s = latency_s
        # A SIGKILLed caller leaves its marker behind; it must outlive a live call's latency.
        self._lock_ttl_ms = int(max(lock_ttl_s, 2 * latency_s + 1.0) * 1000)
        self._record_ttl_s = record_ttl_s
        self._begin = redis.register_script(BEGIN)
        self._commit = redis.register_script(COMMIT)
        self._release = redis.register_script(RELEASE)

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    async def attach_card(
        self, *, account_id: str, customer_id: str | None, payment_method: str
    ) -> AttachedCard:
        if not payment_method.startswith("pm_"):
            # Stripe answers 404 resource_missing: the caller gave us an id that is not a card.
            raise CardRejected("resource_missing", f"No such PaymentMethod: {payment_method!r}")
        refusal = DECLINES_AT_ATTACH.get(payment_method)
        if refusal is not None:
            raise CardRejected(*refusal)
        customer_id = customer_id or f"cus_sim_{account_id}"
        try:
            # At Stripe a detached method can never be attached again, but attaching a test
            # method id (pm_card_visa) materialises a new one each time; the simulator keeps the
            # id, so attaching it again is what re-registering that card looks like here.
            await self._redis.srem(
                self._key("detached"), _detached_member(customer_id, payment_method)
            )
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise TransientGatewayError(f"simulated gateway unreachable: {exc}") from exc
        return AttachedCard(customer_id=customer_id, payment_method=payment_method)

    async def confirm_authentication(self, account_id: str) -> None:
        """The customer passed the (simulated) 3-D Secure challenge: the account's next charge
        that needs authentication succeeds. Expires unused after AUTHENTICATED_TTL_S."""
        await self._redis.set(self._key("authenticated", account_id), "1", ex=AUTHENTICATED_TTL_S)

    async def detach_card(self, *, customer_id: str | None, payment_method: str) -> None:
        """Detach `payment_method` from `customer_id`, as the customer (or support) would at
        Stripe: charges of it for that customer then fail with no_payment_method, until it is
        attached again for that customer."""
        await self._redis.sadd(self._key("detached"), _detached_member(customer_id, payment_method))

    async def forget_key(self, idempotency_key: str) -> None:
        """Drop the key's idempotency record, as Stripe's pruning does after 24 h: the next
        charge() with the key is a new request (and moves money again), while find_charge()
        still finds what the key did."""
        await self._redis.delete(self._key("idem", idempotency_key))

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        try:
            return await self._charge(request)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # Like a network error to a real gateway: the commit may or may not have run, and
            # a replay with the same key finds out.
            raise TransientGatewayError(f"simulated gateway unreachable: {exc}") from exc

    async def _charge(self, request: ChargeRequest) -> ChargeResult:
        fingerprint = self._fingerprint(request)
        lock_key = self._key("lock", request.idempotency_key)
        token = uuid.uuid4().hex
        try:
            state, stored, fault = await self._begin(
                keys=[
                    self._key("faults"),
                    self._key("idem", request.idempotency_key),
                    lock_key,
                    self._key("detached"),
                ],
                args=[
                    token,
                    self._lock_ttl_ms,
                    _detached_member(request.customer_id, request.payment_method),
                ],
            )
            state, fault_name = _text(state), _text(fault) or None
            if state == "fault":
                _transient_fault(fault_name)
                raise GatewayConfigError(f"unknown simulated fault {fault_name!r}")
            if fault_name == "none":
                fault_name = None
            if state == "busy":
                raise TransientGatewayError("idempotency_key_in_use")
            if state == "done":
                result = self._replay(_text(stored), fingerprint)
            elif state == "detached":
                # Stripe refuses the request (400) before anything executes, so nothing is
                # recorded: the key stays free, and find_charge() finds nothing.
                result = ChargeFailed(code=NO_PAYMENT_METHOD, message=DETACHED_MESSAGE)
            else:
                result = await self._execute(request, fingerprint, token, fault_name)
        except BaseException:
            # Nothing was committed (e.g. cancelled, even while the script's answer was on its
            # way): let a retry in without waiting. Only our own marker is ever dropped.
            await self._release(keys=[lock_key], args=[token])
            raise
        if fault_name == "lost_response":
            raise TransientGatewayError("simulated lost response: the charge was processed")
        return result

    async def _execute(
        self, request: ChargeRequest, fingerprint: str, token: str, fault: str | None
    ) -> ChargeResult:
        if self._latency_s > 0:
            await asyncio.sleep(self._latency_s)
        decline = (
            ("card_declined", "Your card was declined.")
            if fault == "decline"
            else charge_decline(request.payment_method)
        )
        if (
            decline is not None
            and decline[0] == AUTHENTICATION_REQUIRED
            and await self._redis.getdel(self._key("authenticated", request.account_id))
        ):
            # The customer completed the bank's challenge on the console: this one charge goes
            # through, as a PaymentIntent confirmed on-session does with Stripe.
            decline = None
        ref = f"pi_sim_{uuid.uuid4().hex[:24]}"
        record = {
            "fingerprint": fingerprint,
            "customer_id": request.customer_id,
            "created": int(time.time()),
            "status": "succeeded" if decline is None else "failed",
            "gateway_ref": ref,
            "code": decline[0] if decline else None,
            "message": decline[1] if decline else None,
        }
        entry = {
            "idempotency_key": request.idempotency_key,
            "account_id": request.account_id,
            "amount": str(request.amount),
            "currency": request.currency,
            "customer_id": request.customer_id,
            "payment_method": request.payment_method,
            "result": record["status"],
            "code": record["code"],
            "gateway_ref": ref,
            "at": time.time(),
        }
        stored = await self._commit(
            keys=[
                self._key("idem", request.idempotency_key),
                self._key("lock", request.idempotency_key),
                self._key("charges"),
                self._key("moved"),
                self._key("executed", request.idempotency_key),
            ],
            args=[
                json.dumps(record),
                json.dumps(entry),
                "1" if decline is None else "0",
                request.idempotency_key,
                self._record_ttl_s,
                token,
            ],
        )
        return self._replay(_text(stored), fingerprint)

    @staticmethod
    def _replay(stored: str, fingerprint: str) -> ChargeResult:
        record = json.loads(stored)
        if record["fingerprint"] != fingerprint:
            # Stripe: 400 idempotency_error. Reusing a key for another request is our bug.
            raise GatewayConfigError(
                "idempotency key reused with different parameters (idempotency_error)"
            )
        if record["status"] == "succeeded":
            return ChargeSucceeded(gateway_ref=record["gateway_ref"])
        return ChargeFailed(
            code=record["code"], message=record["message"], gateway_ref=record["gateway_ref"]
        )

    @staticmethod
    def _fingerprint(request: ChargeRequest) -> str:
        """Validate like Stripe does before any idempotent work, then hash what Stripe compares."""
        if not request.payment_method.startswith("pm_"):
            raise GatewayConfigError(
                f"invalid request: no such PaymentMethod {request.payment_method!r}"
            )
        refusal = charge_refusal(request.amount, request.currency)
        if refusal is not None:
            raise GatewayConfigError(f"invalid request: {refusal}")
        minor = to_gateway_amount(request.amount, request.currency)
        params = [
            request.account_id,
            minor,
            request.currency.lower(),
            request.customer_id,
            request.payment_method,
            request.description,
        ]
        return hashlib.sha256(json.dumps(params).encode()).hexdigest()

    async def find_charge(self, request: ChargeRequest) -> ChargeResult | None:
        try:
            return await self._find_charge(request)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise TransientGatewayError(f"simulated gateway unreachable: {exc}") from exc

    async def _find_charge(self, request: ChargeRequest) -> ChargeResult | None:
        fault = await self._redis.lpop(self._key("find_faults"))
        _transient_fault(_text(fault) if fault is not None else None)
        if request.customer_id is None:
            # Like Stripe, where the lookup lists the customer's PaymentIntents: with no customer
            # there is nothing to list (and no charge of a card on file can lack one).
            return None
        raw = await self._redis.lrange(self._key("executed", request.idempotency_key), 0, -1)
        records = [json.loads(_text(item)) for item in raw]
        floor = created_floor(request)
        mine = [
            r
            for r in records
            if r.get("customer_id") == request.customer_id
            and (floor is None or r.get("created", 0) >= floor)
        ]
        if not mine:
            return None
        # A pruned key reused by charge() executes again: when there are several executions, the
        # one that moved money is the answer (the caller must credit it), else the latest.
        chosen = next(
            (r for r in mine if r["status"] == "succeeded"),
            mine[-1],
        )
        return self._replay(json.dumps(chosen), self._fingerprint(request))

    async def charges_made(self, idempotency_key: str) -> int:
        """How many times money actually moved for this key (anything but 0 or 1 is a bug)."""
        count = await self._redis.hget(self._key("moved"), idempotency_key)
        return int(_text(count)) if count is not None else 0

    async def all_charges(self) -> list[dict[str, Any]]:
        """Every executed charge, oldest first; money moved only where result == "succeeded"."""
        raw = await self._redis.lrange(self._key("charges"), 0, -1)
        return [json.loads(_text(item)) for item in raw]

    async def total_charged(self, account_id: str | None = None) -> Decimal:
        """Money actually taken, for reconciliation against the ledger's credits."""
        return sum(
            (
                Decimal(c["amount"])
                for c in await self.all_charges()
                if c["result"] == "succeeded"
                and (account_id is None or c["account_id"] == account_id)
            ),
            Decimal(0),
        )

    async def close(self) -> None:
        """The Redis client belongs to the caller, who closes it, unless it was given to us."""
        if self._owns_redis:
            await self._redis.aclose()
