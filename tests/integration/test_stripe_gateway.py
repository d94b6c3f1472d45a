"""StripeGateway against localstripe, and against a scripted fake for what localstripe can't say.

localstripe (1.15) never sends 429, 5xx, 409 idempotency_key_in_use, idempotency_error, or a
card error shaped like Stripe's (decline_code, payment_intent): those answers come from a tiny
aiohttp server that replays canned Stripe responses and records what the SDK sent.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import stripe

from common.gateway import (
    CardRejected,
    ChargeFailed,
    ChargeRequest,
    ChargeSucceeded,
    GatewayConfigError,
    GatewayError,
    TransientGatewayError,
)
from common.gateway.stripe_gateway import StripeGateway
from tests.support.localstripe import (
    Localstripe,
    LocalstripeUnavailable,
    available,
    free_port,
    run_localstripe,
)

# stripe 16's HTTPXClient passes the encoded body as `data=`, which httpx 0.28 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

web = pytest.importorskip("aiohttp.web", reason="aiohttp (a localstripe dependency) is missing")


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
async def gateway(localstripe: Localstripe) -> AsyncIterator[StripeGateway]:
    gw = StripeGateway(localstripe.api_key, localstripe.api_base, timeout_s=10)
    yield gw
    await gw.close()


@pytest.fixture
async def sdk(localstripe: Localstripe) -> AsyncIterator[stripe.StripeClient]:
    """A plain SDK client, to set up cards and to read back what the gateway did."""
    http = stripe.HTTPXClient(timeout=10)
    yield stripe.StripeClient(
        localstripe.api_key, http_client=http, base_addresses={"api": localstripe.api_base}
    )
    await http.close_async()  # type: ignore[no-untyped-call]


async def card(sdk: stripe.StripeClient, number: str) -> str:
    """localstripe takes raw card details (exactly number, exp_month, exp_year, cvc)."""
    pm = await sdk.v1.payment_methods.create_async(
        params={
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    return pm.id


def charge_request(
    customer_id: str | None, payment_method: str, *, amount: str = "25.50", key: str | None = None
) -> ChargeRequest:
    return ChargeRequest(
        idempotency_key=key or f"recharge-{uuid.uuid4().hex}-1",
        account_id="acct-ls",
        amount=Decimal(amount),
        currency="USD",
        customer_id=customer_id,
        payment_method=payment_method,
        description="auto-recharge",
    )


def account() -> str:
    return f"acct-{uuid.uuid4().hex[:10]}"


# --- localstripe ----------------------------------------------------------------------------


async def test_attach_visa_and_charge(gateway: StripeGateway, sdk: stripe.StripeClient) -> None:
    attached = await gateway.attach_card(
        account_id=account(), customer_id=None, payment_method="pm_card_visa"
    )
    assert attached.customer_id.startswith("cus_")
    # The test id is materialised into a new PaymentMethod, as Stripe does: keep the new id.
    assert attached.payment_method.startswith("pm_")
    assert attached.payment_method != "pm_card_visa"
    customer = await sdk.v1.customers.retrieve_async(attached.customer_id)
    assert customer.invoice_settings is not None
    assert customer.invoice_settings.default_payment_method == attached.payment_method

    req = charge_request(attached.customer_id, attached.payment_method)
    result = await gateway.charge(req)
    assert isinstance(result, ChargeSucceeded)
    intent = await sdk.v1.payment_intents.retrieve_async(result.gateway_ref)
    assert (intent.status, intent.amount, intent.currency) == ("succeeded", 2550, "usd")
    assert intent.customer == attached.customer_id
    assert intent.metadata["account_id"] == "acct-ls"
    assert intent.metadata["idempotency_key"] == req.idempotency_key
    assert intent.metadata["description"] == "auto-recharge"


async def test_attach_to_an_existing_customer_keeps_it(gateway: StripeGateway) -> None:
    acct = account()
    first = await gateway.attach_card(
        account_id=acct, customer_id=None, payment_method="pm_card_visa"
    )
    second = await gateway.attach_card(
        account_id=acct, customer_id=first.customer_id, payment_method="pm_card_visa"
    )
    assert second.customer_id == first.customer_id
    assert second.payment_method != first.payment_method


async def test_card_declined_at_attach_is_rejected(
    gateway: StripeGateway, sdk: stripe.StripeClient
) -> None:
    pm = await card(sdk, "4000000000000002")
    with pytest.raises(CardRejected) as info:
        await gateway.attach_card(account_id=account(), customer_id=None, payment_method=pm)
    assert info.value.code == "card_declined"


async def test_unknown_payment_method_at_attach_is_rejected(gateway: StripeGateway) -> None:
    with pytest.raises(CardRejected) as info:
        await gateway.attach_card(account_id=account(), customer_id=None, payment_method="pm_nope")
    assert info.value.code == "resource_missing"


async def test_card_declined_at_charge(gateway: StripeGateway, sdk: stripe.StripeClient) -> None:
    pm = await card(sdk, "4000000000000341")  # attaches fine, declines every charge
    attached = await gateway.attach_card(account_id=account(), customer_id=None, payment_method=pm)
    result = await gateway.charge(charge_request(attached.customer_id, attached.payment_method))
    assert isinstance(result, ChargeFailed)
    assert result.code == "card_declined"
    assert result.gateway_ref is not None and result.gateway_ref.startswith("ch_")


async def test_authentication_required(gateway: StripeGateway, sdk: stripe.StripeClient) -> None:
    pm = await card(sdk, "4000002500003155")  # localstripe: 200, status requires_action
    attached = await gateway.attach_card(account_id=account(), customer_id=None, payment_method=pm)
    result = await gateway.charge(charge_request(attached.customer_id, attached.payment_method))
    assert isinstance(result, ChargeFailed)
    assert result.code == "authentication_required"
    assert result.gateway_ref is not None and result.gateway_ref.startswith("pi_")


async def test_same_key_twice_against_localstripe(gateway: StripeGateway) -> None:
    attached = await gateway.attach_card(
        account_id=account(), customer_id=None, payment_method="pm_card_visa"
    )
    req = charge_request(attached.customer_id, attached.payment_method)
    first, second = await gateway.charge(req), await gateway.charge(req)
    assert isinstance(first, ChargeSucceeded) and isinstance(second, ChargeSucceeded)
    # localstripe ignores Idempotency-Key, so it charges twice; real Stripe would answer the
    # same PaymentIntent. Exactly-once is proven against the simulated gateway instead.
    assert first.gateway_ref != second.gateway_ref


async def test_bad_api_key_is_a_config_error(localstripe: Localstripe) -> None:
    secret = "rk_test_not_accepted_by_localstripe"
    gw = StripeGateway(secret, localstripe.api_base, timeout_s=5)
    try:
        with pytest.raises(GatewayConfigError) as info:
            await gw.charge(charge_request("cus_x", "pm_card_visa"))
        assert secret not in str(info.value)
        with pytest.raises(GatewayConfigError):
            await gw.attach_card(account_id=account(), customer_id=None, payment_method="pm_x")
    finally:
        await gw.close()


async def test_invalid_requests_are_config_errors(gateway: StripeGateway) -> None:
    attached = await gateway.attach_card(
        account_id=account(), customer_id=None, payment_method="pm_card_visa"
    )
    with pytest.raises(GatewayConfigError):  # 404: no such PaymentMethod
        await gateway.charge(charge_request(attached.customer_id, "pm_does_not_exist"))
    with pytest.raises(GatewayConfigError, match="minor unit"):  # refused before any request
        await gateway.charge(charge_request(attached.customer_id, "pm_x", amount="25.001"))


async def test_connection_refused_is_transient() -> None:
    gw = StripeGateway("sk_test_x", f"http://127.0.0.1:{free_port()}", timeout_s=2)
    try:
        with pytest.raises(TransientGatewayError):
            await gw.charge(charge_request("cus_x", "pm_x"))
        with pytest.raises(TransientGatewayError):
            await gw.attach_card(account_id=account(), customer_id=None, payment_method="pm_x")
    finally:
        await gw.close()


# --- a scripted fake, for Stripe's answers localstripe never gives --------------------------


@dataclass
class FakeStripe:
    api_base: str = ""
    replies: list[tuple[int, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    delay_s: float = 0.0

    async def handle(self, request: Any) -> Any:
        form = await request.post()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "idempotency_key": request.headers.get("Idempotency-Key"),
                "form": dict(form),
            }
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status, body = self.replies.pop(0)
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/html")
        return web.json_response(body, status=status)


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    server = FakeStripe()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.api_base = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


@pytest.fixture
async def fake_gateway(fake: FakeStripe) -> AsyncIterator[StripeGateway]:
    # local_server=False: send exactly what real Stripe gets.
    gw = StripeGateway("sk_test_fake", fake.api_base, timeout_s=2, local_server=False)
    yield gw
    await gw.close()


def intent(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": "pi_fake", "object": "payment_intent", "status": status, **extra}


def card_error(code: str, decline_code: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": "Your card was declined.",
            "payment_intent": intent("requires_payment_method", last_payment_error=None),
        }
    }


async def test_request_shape_for_real_stripe(fake: FakeStripe, fake_gateway: StripeGateway) -> None:
    fake.replies.append((200, intent("succeeded")))
    req = charge_request("cus_1", "pm_1")
    assert await fake_gateway.charge(req) == ChargeSucceeded("pi_fake")
    [sent] = fake.requests
    assert (sent["method"], sent["path"]) == ("POST", "/v1/payment_intents")
    assert sent["idempotency_key"] == req.idempotency_key
    assert sent["form"] == {
        "amount": "2550",
        "currency": "usd",
        "customer": "cus_1",
        "payment_method": "pm_1",
        "confirm": "true",
        "off_session": "true",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
        "metadata[account_id]": "acct-ls",
        "metadata[idempotency_key]": req.idempotency_key,
        "metadata[description]": "auto-recharge",
    }


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, {"error": {"type": "api_error", "message": "boom"}}, TransientGatewayError),
        (502, "<html>bad gateway</html>", TransientGatewayError),
        (200, "not json", TransientGatewayError),
        (
            429,
            {"error": {"type": "invalid_request_error", "code": "rate_limit"}},
            TransientGatewayError,
        ),
        (
            409,
            {"error": {"type": "invalid_request_error", "code": "idempotency_key_in_use"}},
            TransientGatewayError,
        ),
        (
            400,
            {"error": {"type": "idempotency_error", "message": "Keys ... same parameters"}},
            GatewayConfigError,
        ),
        (
            401,
            {"error": {"type": "invalid_request_error", "message": "bad key"}},
            GatewayConfigError,
        ),
        (403, {"error": {"type": "invalid_request_error", "message": "no"}}, GatewayConfigError),
        (400, {"error": {"type": "invalid_request_error", "param": "amount"}}, GatewayConfigError),
        (200, intent("requires_capture"), GatewayConfigError),
    ],
)
async def test_error_classes(
    fake: FakeStripe,
    fake_gateway: StripeGateway,
    status: int,
    body: Any,
    expected: type[GatewayError],
) -> None:
    fake.replies.append((status, body))
    with pytest.raises(expected):
        await fake_gateway.charge(charge_request("cus_1", "pm_1"))
    assert len(fake.requests) == 1  # the SDK did not retry on its own


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (card_error("card_declined", "insufficient_funds"), "insufficient_funds"),
        (card_error("card_declined", "generic_decline"), "card_declined"),
        (
            card_error("authentication_required", "authentication_required"),
            "authentication_required",
        ),
        (card_error("expired_card"), "expired_card"),
    ],
)
async def test_card_errors_are_failed_attempts(
    fake: FakeStripe, fake_gateway: StripeGateway, body: dict[str, Any], code: str
) -> None:
    fake.replies.append((402, body))
    result = await fake_gateway.charge(charge_request("cus_1", "pm_1"))
    assert result == ChargeFailed(
        code=code, message="Your card was declined.", gateway_ref="pi_fake"
    )


async def test_failed_intent_without_an_error(
    fake: FakeStripe, fake_gateway: StripeGateway
) -> None:
    error = {"code": "card_declined", "decline_code": "lost_card", "message": "Declined."}
    fake.replies.append((200, intent("requires_payment_method", last_payment_error=error)))
    result = await fake_gateway.charge(charge_request("cus_1", "pm_1"))
    assert result == ChargeFailed(code="lost_card", message="Declined.", gateway_ref="pi_fake")


async def test_processing_is_reread(fake: FakeStripe, fake_gateway: StripeGateway) -> None:
    fake.replies += [(200, intent("processing")), (200, intent("succeeded"))]
    assert await fake_gateway.charge(charge_request("cus_1", "pm_1")) == ChargeSucceeded("pi_fake")
    assert [(r["method"], r["path"]) for r in fake.requests] == [
        ("POST", "/v1/payment_intents"),
        ("GET", "/v1/payment_intents/pi_fake"),
    ]
    fake.replies += [(200, intent("processing")), (200, intent("processing"))]
    with pytest.raises(TransientGatewayError):
        await fake_gateway.charge(charge_request("cus_1", "pm_1"))


async def test_timeout_is_transient(fake: FakeStripe) -> None:
    fake.delay_s = 1.0
    fake.replies.append((200, intent("succeeded")))
    gw = StripeGateway("sk_test_fake", fake.api_base, timeout_s=0.2, local_server=False)
    try:
        with pytest.raises(TransientGatewayError):
            await gw.charge(charge_request("cus_1", "pm_1"))
    finally:
        await gw.close()
