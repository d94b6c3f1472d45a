"""A payment gateway simulated in Redis, with Stripe's idempotency semantics and injectable faults.

State lives in Redis under `prefix`, so it outlives a SIGKILLed worker and is shared by every
worker process: a redelivered message that replays an idempotency key sees what the first
process recorded. Keys:

    <prefix>:faults        list, LPOPped at the start of every charge (see FAULTS)
    <prefix>:idem:<key>    the stored result of the first execution of an idempotency key
    <prefix>:lock:<key>    short-lived in-progress marker (SET NX PX)
    <prefix>:charges       every executed charge, JSON, oldest first (replays add nothing)
    <prefix>:moved         hash: idempotency key -> number of times money moved (0 or 1)
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
    AttachedCard,
    CardRejected,
    ChargeFailed,
    ChargeRequest,
    ChargeResult,
    ChargeSucceeded,
    GatewayConfigError,
    TransientGatewayError,
)
from common.money import MoneyError, to_minor_units

FAULTS: Final = frozenset(
    {
        "timeout",  # TransientGatewayError before anything happens
        "lost_response",  # the charge happens and is recorded, then TransientGatewayError
        "rate_limit",  # TransientGatewayError (429)
        "server_error",  # TransientGatewayError (500)
        "config_error",  # GatewayConfigError, like a revoked API key
        "decline",  # this charge is declined (card_declined) whatever the payment method
    }
)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def inject_faults(redis: aioredis.Redis, prefix: str, *faults: str) -> None:
    """Queue faults: each charge call, whatever its key, consumes the next one."""
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"unknown simulated faults {unknown}; known: {sorted(FAULTS)}")
    if faults:
        await redis.rpush(f"{prefix}:faults", *faults)


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
    ) -> None:
        """`latency_s` simulates the gateway's processing time while the key is in progress.

        `record_ttl_s` = 0 keeps idempotency records forever (stricter than Stripe's 24 h, so
        a late replay can never charge twice here).
        """
        self._redis = redis
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
        return AttachedCard(
            customer_id=customer_id or f"cus_sim_{account_id}", payment_method=payment_method
        )

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        try:
            return await self._charge(request)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # Like a network error to a real gateway: the commit may or may not have run, and
            # a replay with the same key finds out.
            raise TransientGatewayError(f"simulated gateway unreachable: {exc}") from exc

    async def _charge(self, request: ChargeRequest) -> ChargeResult:
        fault = await self._redis.lpop(self._key("faults"))
        fault_name = _text(fault) if fault is not None else None
        if fault_name == "timeout":
            raise TransientGatewayError("simulated timeout: no response from the gateway")
        if fault_name == "rate_limit":
            raise TransientGatewayError("simulated rate limit (HTTP 429)")
        if fault_name == "server_error":
            raise TransientGatewayError("simulated server error (HTTP 500)")
        if fault_name == "config_error":
            raise GatewayConfigError("simulated configuration error: invalid API key")
        if fault_name not in (None, "lost_response", "decline"):
            raise GatewayConfigError(f"unknown simulated fault {fault_name!r}")

        fingerprint = self._fingerprint(request)
        record_key = self._key("idem", request.idempotency_key)
        lock_key = self._key("lock", request.idempotency_key)
        token = uuid.uuid4().hex
        state, stored = await self._begin(
            keys=[record_key, lock_key], args=[token, self._lock_ttl_ms]
        )
        state = _text(state)
        if state == "busy":
            raise TransientGatewayError("idempotency_key_in_use")
        if state == "done":
            result = self._replay(_text(stored), fingerprint)
        else:
            try:
                result = await self._execute(request, fingerprint, token, fault_name)
            except BaseException:
                # Nothing was committed (e.g. cancelled): let a retry in without waiting.
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
        ref = f"pi_sim_{uuid.uuid4().hex[:24]}"
        record = {
            "fingerprint": fingerprint,
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
        if request.amount <= 0:
            raise GatewayConfigError("invalid request: amount must be positive")
        try:
            minor = to_minor_units(request.amount, request.currency)
        except MoneyError as exc:
            raise GatewayConfigError(f"invalid request: {exc}") from exc
        params = [
            request.account_id,
            minor,
            request.currency.lower(),
            request.customer_id,
            request.payment_method,
            request.description,
        ]
        return hashlib.sha256(json.dumps(params).encode()).hexdigest()

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
        """The Redis client belongs to the caller, who closes it."""
