"""The simulated gateway where no Redis state is involved: the factory, attaching a card, and an
unreachable Redis. Charges, idempotency and faults (on fakeredis and on the real Redis) and
processes sharing one Redis: tests/integration/test_gateway_simulated.py."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import fakeredis
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from common.gateway import CardRejected, GatewayConfigError, TransientGatewayError, build_gateway
from common.gateway.simulated import SimulatedGateway
from common.gateway.stripe_gateway import StripeGateway
from config.settings import Settings
from tests.support.factories import charge_request


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


@pytest.fixture
def gw(redis_client: aioredis.Redis) -> SimulatedGateway:
    return SimulatedGateway(redis_client, "unit-simgw")


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


async def test_factory(redis_client: aioredis.Redis) -> None:
    settings = Settings()
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


async def test_factory_gives_the_simulator_its_own_redis(redis_client: aioredis.Redis) -> None:
    """CONTACTO_SIMULATED_REDIS_URL: the gateway's state lives apart from the broker's Redis
    (a flush of ours must not make the gateway forget charges), and the gateway closes the
    client it made; without it, the caller's client is used and left open."""
    settings = Settings().model_copy(
        update={
            "payment_gateway": "simulated",
            "simulated_gateway_redis_url": "redis://127.0.0.1:1/0",
        }
    )
    own = build_gateway(settings, redis_client)
    assert isinstance(own, SimulatedGateway)
    assert own._redis is not redis_client
    assert own._redis.connection_pool.connection_kwargs["port"] == 1
    await own.close()

    shared = build_gateway(
        settings.model_copy(update={"simulated_gateway_redis_url": None}), redis_client
    )
    assert isinstance(shared, SimulatedGateway)
    assert shared._redis is redis_client
    await shared.close()
    assert await redis_client.ping()


async def test_unreachable_redis_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        with pytest.raises(TransientGatewayError, match="unreachable"):
            await SimulatedGateway(client, "nowhere").charge(charge_request())
    finally:
        await client.aclose()
