"""The simulated gateway on fakeredis: forgotten keys, find_charge, detached cards, amounts.

A forgotten key is what Stripe does to an idempotency key after 24 hours: charge() with it is a
new request (money moves again), and only find_charge(), which reads the charge carrying the key
(a PaymentIntent's metadata at Stripe), tells the caller what its lost call did.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import fakeredis
import pytest

from common.gateway import (
    NO_PAYMENT_METHOD,
    ChargeFailed,
    ChargeRequest,
    ChargeResult,
    ChargeSucceeded,
    GatewayConfigError,
    TransientGatewayError,
)
from common.gateway.base import CREATED_AFTER_MARGIN_S
from common.gateway.simulated import (
    DETACHED_MESSAGE,
    SimulatedGateway,
    inject_faults,
    inject_find_faults,
)

PREFIX = "simgw"


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    yield client
    await client.aclose()


@pytest.fixture
def gw(redis: fakeredis.FakeAsyncRedis) -> SimulatedGateway:
    return SimulatedGateway(redis, PREFIX)


def request(
    payment_method: str = "pm_card_visa",
    *,
    key: str | None = None,
    amount: str = "25.00",
    currency: str = "USD",
    customer_id: str | None = "cus_sim_acct-1",
    created_after: datetime | None = None,
) -> ChargeRequest:
    return ChargeRequest(
        idempotency_key=key or f"recharge-{uuid.uuid4().hex}-1",
        account_id="acct-1",
        amount=Decimal(amount),
        currency=currency,
        customer_id=customer_id,
        payment_method=payment_method,
        created_after=created_after,
    )


async def find_then_charge(gw: SimulatedGateway, req: ChargeRequest) -> ChargeResult:
    """What a caller that lost an answer does once the key may have been pruned."""
    found = await gw.find_charge(req)
    return found if found is not None else await gw.charge(req)


# --- forget_key -------------------------------------------------------------------------------


async def test_a_forgotten_key_is_a_new_request_like_at_stripe(gw: SimulatedGateway) -> None:
    req = request()
    first = await gw.charge(req)
    await gw.forget_key(req.idempotency_key)
    second = await gw.charge(req)
    assert isinstance(first, ChargeSucceeded) and isinstance(second, ChargeSucceeded)
    assert first.gateway_ref != second.gateway_ref
    assert await gw.charges_made(req.idempotency_key) == 2  # the double charge find_charge avoids
    assert await gw.total_charged() == Decimal("50.00")


async def test_forgetting_an_unknown_key_is_harmless(gw: SimulatedGateway) -> None:
    await gw.forget_key("never-used")
    assert await gw.all_charges() == []


async def test_lost_response_then_forgotten_key_find_then_charge_charges_once(
    gw: SimulatedGateway, redis: fakeredis.FakeAsyncRedis
) -> None:
    await inject_faults(redis, PREFIX, "lost_response")
    req = request()
    with pytest.raises(TransientGatewayError):
        await gw.charge(req)
    await gw.forget_key(req.idempotency_key)
    [entry] = await gw.all_charges()
    result = await find_then_charge(gw, req)
    assert result == ChargeSucceeded(gateway_ref=entry["gateway_ref"])
    assert await gw.charges_made(req.idempotency_key) == 1
    assert len(await gw.all_charges()) == 1


# --- find_charge ------------------------------------------------------------------------------


async def test_find_charge_finds_nothing_when_nothing_executed(
    gw: SimulatedGateway, redis: fakeredis.FakeAsyncRedis
) -> None:
    req = request()
    assert await gw.find_charge(req) is None
    await inject_faults(redis, PREFIX, "timeout")  # fails before anything executes
    with pytest.raises(TransientGatewayError):
        await gw.charge(req)
    assert await gw.find_charge(req) is None
    result = await find_then_charge(gw, req)
    assert isinstance(result, ChargeSucceeded)
    assert await gw.charges_made(req.idempotency_key) == 1


async def test_find_charge_finds_a_remembered_key_too(gw: SimulatedGateway) -> None:
    req = request()
    charged = await gw.charge(req)
    assert await gw.find_charge(req) == charged


async def test_find_charge_returns_a_decline_as_charge_did(gw: SimulatedGateway) -> None:
    req = request("pm_card_chargeDeclinedInsufficientFunds")
    declined = await gw.charge(req)
    await gw.forget_key(req.idempotency_key)
    found = await gw.find_charge(req)
    assert isinstance(found, ChargeFailed) and found.code == "insufficient_funds"
    assert found == declined


async def test_find_charge_prefers_the_execution_that_moved_money(
    gw: SimulatedGateway, redis: fakeredis.FakeAsyncRedis
) -> None:
    req = request()
    await inject_faults(redis, PREFIX, "decline")
    declined = await gw.charge(req)
    assert isinstance(declined, ChargeFailed)
    await gw.forget_key(req.idempotency_key)
    charged = await gw.charge(req)  # a caller that did not look first
    assert isinstance(charged, ChargeSucceeded)
    assert await gw.find_charge(req) == charged


async def test_find_charge_is_scoped_to_the_customer(gw: SimulatedGateway) -> None:
    req = request()
    await gw.charge(req)
    other = request(key=req.idempotency_key, customer_id="cus_sim_someone-else")
    assert await gw.find_charge(other) is None


async def test_find_charge_without_a_customer_finds_nothing(gw: SimulatedGateway) -> None:
    # Like Stripe, where the lookup lists a customer's PaymentIntents.
    req = request(customer_id=None)
    assert isinstance(await gw.charge(req), ChargeSucceeded)
    assert await gw.find_charge(req) is None


async def test_find_charge_with_other_parameters_is_a_config_error(gw: SimulatedGateway) -> None:
    req = request()
    await gw.charge(req)
    with pytest.raises(GatewayConfigError, match="idempotency"):
        await gw.find_charge(request(key=req.idempotency_key, amount="30.00"))


async def test_find_charge_honours_created_after_with_a_margin(gw: SimulatedGateway) -> None:
    req = request()
    await gw.charge(req)
    now = datetime.now(UTC)
    slightly_late = now + timedelta(seconds=CREATED_AFTER_MARGIN_S // 2)
    assert await gw.find_charge(request(key=req.idempotency_key, created_after=now)) is not None
    assert (
        await gw.find_charge(request(key=req.idempotency_key, created_after=slightly_late))
        is not None
    )
    naive = (now - timedelta(hours=1)).replace(tzinfo=None)  # taken as UTC
    assert await gw.find_charge(request(key=req.idempotency_key, created_after=naive)) is not None
    much_later = now + timedelta(seconds=CREATED_AFTER_MARGIN_S * 2)
    assert await gw.find_charge(request(key=req.idempotency_key, created_after=much_later)) is None


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("timeout", TransientGatewayError),
        ("rate_limit", TransientGatewayError),
        ("server_error", TransientGatewayError),
        ("config_error", GatewayConfigError),
    ],
)
async def test_find_charge_faults_have_their_own_queue(
    gw: SimulatedGateway,
    redis: fakeredis.FakeAsyncRedis,
    fault: str,
    error: type[Exception],
) -> None:
    req = request()
    await inject_faults(redis, PREFIX, "decline")
    await inject_find_faults(redis, PREFIX, fault)
    with pytest.raises(error):
        await gw.find_charge(req)
    assert await gw.find_charge(req) is None  # consumed; the charge fault was not
    declined = await gw.charge(req)
    assert isinstance(declined, ChargeFailed) and declined.code == "card_declined"


async def test_unknown_find_faults_are_refused(redis: fakeredis.FakeAsyncRedis) -> None:
    with pytest.raises(ValueError, match="unknown find_charge faults"):
        await inject_find_faults(redis, PREFIX, "lost_response")
    assert not await redis.exists(f"{PREFIX}:find_faults")


# --- detached cards ---------------------------------------------------------------------------


async def test_a_detached_card_fails_with_no_payment_method(gw: SimulatedGateway) -> None:
    card = await gw.attach_card(
        account_id="acct-1", customer_id=None, payment_method="pm_card_visa"
    )
    await gw.detach_card(customer_id=card.customer_id, payment_method=card.payment_method)
    req = request(card.payment_method, customer_id=card.customer_id)
    result = await gw.charge(req)
    assert result == ChargeFailed(code=NO_PAYMENT_METHOD, message=DETACHED_MESSAGE)
    # Refused before anything executed, as Stripe's 400 is: nothing to find, no money moved.
    assert await gw.all_charges() == []
    assert await gw.find_charge(req) is None
    # ... and the key is not used up: re-registering the card lets the same attempt through.
    await gw.attach_card(
        account_id="acct-1", customer_id=card.customer_id, payment_method=card.payment_method
    )
    assert isinstance(await gw.charge(req), ChargeSucceeded)
    assert await gw.charges_made(req.idempotency_key) == 1


async def test_detaching_is_per_customer(gw: SimulatedGateway) -> None:
    await gw.detach_card(customer_id="cus_sim_acct-1", payment_method="pm_card_visa")
    assert isinstance(await gw.charge(request(customer_id="cus_sim_acct-2")), ChargeSucceeded)
    assert isinstance(await gw.charge(request("pm_card_mastercard")), ChargeSucceeded)
    failed = await gw.charge(request())
    assert isinstance(failed, ChargeFailed) and failed.code == NO_PAYMENT_METHOD


async def test_a_charge_already_made_replays_after_detaching(gw: SimulatedGateway) -> None:
    # Stripe's idempotency layer answers a remembered key before looking at the card.
    req = request()
    charged = await gw.charge(req)
    await gw.detach_card(customer_id=req.customer_id, payment_method=req.payment_method)
    assert await gw.charge(req) == charged


async def test_unknown_payment_methods_still_decline(gw: SimulatedGateway) -> None:
    result = await gw.charge(request("pm_card_never_heard_of_it"))
    assert isinstance(result, ChargeFailed) and result.code == "card_declined"


# --- Stripe's amount rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("49", "JPY"),
        ("0.49", "USD"),
        ("100.5", "ISK"),
        ("1000.5", "MGA"),
        ("1.234", "KWD"),
        ("174.99", "HUF"),
    ],
)
async def test_amounts_stripe_refuses_are_config_errors_and_record_nothing(
    gw: SimulatedGateway, amount: str, currency: str
) -> None:
    req = request(amount=amount, currency=currency)
    with pytest.raises(GatewayConfigError, match="invalid request"):
        await gw.charge(req)
    assert await gw.all_charges() == []


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("50", "JPY"), ("0.50", "USD"), ("100", "ISK"), ("1000", "MGA"), ("1.230", "KWD")],
)
async def test_amounts_stripe_takes_are_charged(
    gw: SimulatedGateway, amount: str, currency: str
) -> None:
    req = request(amount=amount, currency=currency)
    assert isinstance(await gw.charge(req), ChargeSucceeded)
    [entry] = await gw.all_charges()
    assert (entry["amount"], entry["currency"]) == (amount, currency)
