"""The simulated gateway against the real Redis: test cards, idempotency, faults, concurrency."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from common.gateway import (
    CardRejected,
    ChargeFailed,
    ChargeRequest,
    ChargeResult,
    ChargeSucceeded,
    GatewayConfigError,
    TransientGatewayError,
    build_gateway,
)
from common.gateway.simulated import SimulatedGateway, delete_state, inject_faults
from common.gateway.stripe_gateway import StripeGateway
from config.settings import Settings
from tests.conftest import NAMESPACE_PREFIX, REDIS_URL


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"{NAMESPACE_PREFIX}:simgw-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def gw(redis_client: aioredis.Redis, prefix: str) -> AsyncIterator[SimulatedGateway]:
    yield SimulatedGateway(redis_client, prefix)
    await delete_state(redis_client, prefix)


def request(
    payment_method: str = "pm_card_visa", *, key: str | None = None, amount: str = "25.00"
) -> ChargeRequest:
    return ChargeRequest(
        idempotency_key=key or f"recharge-{uuid.uuid4().hex}-1",
        account_id="acct-1",
        amount=Decimal(amount),
        currency="USD",
        customer_id="cus_sim_acct-1",
        payment_method=payment_method,
    )


async def test_visa_charge_succeeds_and_moves_money_once(gw: SimulatedGateway) -> None:
    req = request(amount="25.50")
    result = await gw.charge(req)
    assert isinstance(result, ChargeSucceeded)
    assert result.gateway_ref.startswith("pi_sim_")
    assert await gw.charges_made(req.idempotency_key) == 1
    [entry] = await gw.all_charges()
    assert entry["idempotency_key"] == req.idempotency_key
    assert entry["account_id"] == "acct-1"
    assert entry["amount"] == "25.50"
    assert entry["currency"] == "USD"
    assert entry["payment_method"] == "pm_card_visa"
    assert entry["result"] == "succeeded"
    assert await gw.total_charged() == Decimal("25.50")


@pytest.mark.parametrize(
    ("payment_method", "code"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_authenticationRequired", "authentication_required"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
        ("pm_card_never_heard_of_it", "card_declined"),
    ],
)
async def test_declining_cards_fail_without_moving_money(
    gw: SimulatedGateway, payment_method: str, code: str
) -> None:
    req = request(payment_method)
    result = await gw.charge(req)
    assert isinstance(result, ChargeFailed)
    assert result.code == code
    assert result.gateway_ref is not None
    assert await gw.charges_made(req.idempotency_key) == 0
    assert [c["result"] for c in await gw.all_charges()] == ["failed"]
    assert await gw.total_charged() == Decimal(0)
    # A decline is a stored result like Stripe's: the same key replays it.
    assert await gw.charge(req) == result


@pytest.mark.parametrize(
    ("payment_method", "amount"),
    [("card_visa", "25"), ("visa", "25"), ("pm_card_visa", "25.001"), ("pm_card_visa", "0")],
)
async def test_invalid_requests_are_config_errors_and_record_nothing(
    gw: SimulatedGateway, payment_method: str, amount: str
) -> None:
    req = request(payment_method, amount=amount)
    with pytest.raises(GatewayConfigError):
        await gw.charge(req)
    assert await gw.all_charges() == []


async def test_attach_card(gw: SimulatedGateway) -> None:
    card = await gw.attach_card(account_id="a-1", customer_id=None, payment_method="pm_card_visa")
    assert (card.customer_id, card.payment_method) == ("cus_sim_a-1", "pm_card_visa")
    again = await gw.attach_card(
        account_id="a-1", customer_id="cus_existing", payment_method="pm_card_chargeDeclined"
    )
    assert (again.customer_id, again.payment_method) == ("cus_existing", "pm_card_chargeDeclined")


@pytest.mark.parametrize(
    ("payment_method", "code"),
    [
        ("pm_card_attachDeclined", "card_declined"),
        ("pm_card_visa_chargeDeclined", "card_declined"),
        ("not-a-payment-method", "resource_missing"),
    ],
)
async def test_attach_refusals(gw: SimulatedGateway, payment_method: str, code: str) -> None:
    with pytest.raises(CardRejected) as info:
        await gw.attach_card(account_id="a-1", customer_id=None, payment_method=payment_method)
    assert info.value.code == code


async def test_same_key_twice_charges_once_and_returns_the_same_result(
    gw: SimulatedGateway,
) -> None:
    req = request()
    first = await gw.charge(req)
    second = await gw.charge(req)
    assert first == second
    # 25 and 25.00 are the same request to a gateway that compares minor units.
    assert await gw.charge(request(key=req.idempotency_key, amount="25")) == first
    assert await gw.charges_made(req.idempotency_key) == 1
    assert len(await gw.all_charges()) == 1


async def test_same_key_other_parameters_is_a_config_error(gw: SimulatedGateway) -> None:
    req = request()
    await gw.charge(req)
    with pytest.raises(GatewayConfigError, match="idempotency"):
        await gw.charge(request(key=req.idempotency_key, amount="30.00"))
    with pytest.raises(GatewayConfigError):
        await gw.charge(request("pm_card_chargeDeclined", key=req.idempotency_key))
    assert await gw.charges_made(req.idempotency_key) == 1


async def charge_until_answered(
    gw: SimulatedGateway, req: ChargeRequest
) -> tuple[ChargeResult, int]:
    """What our retry loop does: the same key again after idempotency_key_in_use."""
    busy = 0
    while True:
        try:
            return await gw.charge(req), busy
        except TransientGatewayError as exc:
            assert "idempotency_key_in_use" in str(exc)
            busy += 1
            await asyncio.sleep(0.005)


async def test_concurrent_calls_with_one_key_charge_exactly_once(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    # Separate clients and gateway objects stand in for separate worker processes.
    clients = [aioredis.Redis.from_url(REDIS_URL) for _ in range(4)]
    try:
        gateways = [SimulatedGateway(c, prefix, latency_s=0.05) for c in clients]
        req = request()
        outcomes = await asyncio.gather(
            *(charge_until_answered(gateways[i % 4], req) for i in range(40))
        )
        results = {result for result, _ in outcomes}
        assert len(results) == 1
        assert isinstance(results.pop(), ChargeSucceeded)
        assert sum(busy for _, busy in outcomes) > 0  # the in-progress path was exercised
        assert await gateways[0].charges_made(req.idempotency_key) == 1
        assert len(await gateways[0].all_charges()) == 1
    finally:
        for c in clients:
            await c.aclose()
        await delete_state(redis_client, prefix)


async def wait_until_exists(client: aioredis.Redis, key: str, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if await client.exists(key):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{key} never appeared")


async def test_key_in_progress_is_transient(redis_client: aioredis.Redis, prefix: str) -> None:
    slow = SimulatedGateway(redis_client, prefix, latency_s=0.3)
    req = request()
    first = asyncio.create_task(slow.charge(req))
    try:
        await wait_until_exists(redis_client, f"{prefix}:lock:{req.idempotency_key}")
        with pytest.raises(TransientGatewayError, match="idempotency_key_in_use"):
            await slow.charge(req)
        result = await first
        assert await slow.charge(req) == result
        assert await slow.charges_made(req.idempotency_key) == 1
    finally:
        await delete_state(redis_client, prefix)


async def test_cancelled_call_releases_its_key(redis_client: aioredis.Redis, prefix: str) -> None:
    slow = SimulatedGateway(redis_client, prefix, latency_s=0.3)
    req = request()
    task = asyncio.create_task(slow.charge(req))
    try:
        await wait_until_exists(redis_client, f"{prefix}:lock:{req.idempotency_key}")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await slow.charges_made(req.idempotency_key) == 0
        assert isinstance(await slow.charge(req), ChargeSucceeded)  # no wait for a TTL
        assert await slow.charges_made(req.idempotency_key) == 1
    finally:
        await delete_state(redis_client, prefix)


@pytest.mark.parametrize("fault", ["timeout", "rate_limit", "server_error"])
async def test_transient_faults_happen_before_any_charge(
    gw: SimulatedGateway, redis_client: aioredis.Redis, prefix: str, fault: str
) -> None:
    await inject_faults(redis_client, prefix, fault)
    req = request()
    with pytest.raises(TransientGatewayError):
        await gw.charge(req)
    assert await gw.charges_made(req.idempotency_key) == 0
    assert isinstance(await gw.charge(req), ChargeSucceeded)  # the fault was consumed
    assert await gw.charges_made(req.idempotency_key) == 1


async def test_config_error_fault(
    gw: SimulatedGateway, redis_client: aioredis.Redis, prefix: str
) -> None:
    await inject_faults(redis_client, prefix, "config_error")
    req = request()
    with pytest.raises(GatewayConfigError):
        await gw.charge(req)
    assert await gw.all_charges() == []


async def test_lost_response_then_retry_returns_the_recorded_charge(
    gw: SimulatedGateway, redis_client: aioredis.Redis, prefix: str
) -> None:
    await inject_faults(redis_client, prefix, "lost_response")
    req = request()
    with pytest.raises(TransientGatewayError):
        await gw.charge(req)
    assert await gw.charges_made(req.idempotency_key) == 1  # money moved, caller never heard
    [entry] = await gw.all_charges()
    retry = await gw.charge(req)
    assert retry == ChargeSucceeded(gateway_ref=entry["gateway_ref"])
    assert await gw.charges_made(req.idempotency_key) == 1


async def test_decline_fault_and_fault_order(
    gw: SimulatedGateway, redis_client: aioredis.Redis, prefix: str
) -> None:
    await inject_faults(redis_client, prefix, "timeout", "decline")
    with pytest.raises(TransientGatewayError):
        await gw.charge(request())
    declined = await gw.charge(request())
    assert isinstance(declined, ChargeFailed) and declined.code == "card_declined"
    assert isinstance(await gw.charge(request()), ChargeSucceeded)


async def test_inject_unknown_fault_is_refused(redis_client: aioredis.Redis, prefix: str) -> None:
    with pytest.raises(ValueError, match="unknown simulated faults"):
        await inject_faults(redis_client, prefix, "timeout", "meteor")
    assert not await redis_client.exists(f"{prefix}:faults")


async def test_works_with_decoded_responses(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        gw = SimulatedGateway(client, prefix)
        await inject_faults(client, prefix, "lost_response")
        req = request()
        with pytest.raises(TransientGatewayError):
            await gw.charge(req)
        assert isinstance(await gw.charge(req), ChargeSucceeded)
        assert await gw.charges_made(req.idempotency_key) == 1
    finally:
        await delete_state(client, prefix)
        await client.aclose()


async def test_factory(settings: Settings, redis_client: aioredis.Redis) -> None:
    simulated = build_gateway(
        settings.model_copy(update={"payment_gateway": "simulated"}), redis_client
    )
    assert isinstance(simulated, SimulatedGateway)
    assert simulated.name == "simulated"

    no_key = settings.model_copy(update={"payment_gateway": "stripe", "stripe_api_key": None})
    with pytest.raises(GatewayConfigError, match="STRIPE_API_KEY"):
        build_gateway(no_key, redis_client)

    secret = "sk_test_factory_never_printed"
    with_key = no_key.model_copy(update={"stripe_api_key": SecretStr(secret)})
    stripe_gw = build_gateway(with_key, redis_client)
    try:
        assert isinstance(stripe_gw, StripeGateway)
        assert secret not in repr(stripe_gw)
    finally:
        await stripe_gw.close()


async def test_unreachable_redis_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        with pytest.raises(TransientGatewayError, match="unreachable"):
            await SimulatedGateway(client, "nowhere").charge(request())
    finally:
        await client.aclose()
