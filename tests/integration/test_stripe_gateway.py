"""StripeGateway against localstripe, against the Stripe double in front of it, and against a
scripted fake for what neither can say.

localstripe (1.15) ignores Idempotency-Key, cannot list PaymentIntents by customer, and lets a
detached card be charged: the double (tests/support/stripe_double.py) adds Stripe's behaviour
there, plus keys forgotten and responses lost on demand. Card errors shaped like Stripe's
(decline_code, payment_intent) and odd statuses come from a tiny aiohttp server that replays
canned Stripe responses and records what the SDK sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import stripe

from common.gateway import (
    NO_PAYMENT_METHOD,
    CardRejected,
    ChargeFailed,
    ChargeRequest,
    ChargeResult,
    ChargeSucceeded,
    GatewayConfigError,
    GatewayError,
    TransientGatewayError,
)
from common.gateway.stripe_gateway import StripeGateway
from tests.support.localstripe import (
    Localstripe,
    free_port,
)
from tests.support.stripe_double import DETACHED_AT_CONFIRM, StripeDouble

# stripe 16's HTTPXClient passes the encoded body as `data=`, which httpx 0.28 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

web = pytest.importorskip("aiohttp.web", reason="aiohttp (a localstripe dependency) is missing")


@pytest.fixture
def gateway(localstripe_gateway: StripeGateway) -> StripeGateway:
    return localstripe_gateway


@pytest.fixture
async def sdk(localstripe: Localstripe) -> AsyncIterator[stripe.StripeClient]:
    """A plain SDK client, to set up cards and to read back what the gateway did."""
    http = stripe.HTTPXClient(timeout=10)
    yield stripe.StripeClient(
        localstripe.api_key, http_client=http, base_addresses={"api": localstripe.api_base}
    )
    await http.close_async()  # type: ignore[no-untyped-call]


@pytest.fixture
async def dgw(localstripe: Localstripe, double: StripeDouble) -> AsyncIterator[StripeGateway]:
    """The gateway talking to the double."""
    double.reset()
    gw = StripeGateway(localstripe.api_key, double.api_base, timeout_s=10)
    yield gw
    await gw.close()
    double.reset()


@pytest.fixture
async def dsdk(
    localstripe: Localstripe, double: StripeDouble
) -> AsyncIterator[stripe.StripeClient]:
    """A plain SDK client to the double: detach cards, list what the gateway did."""
    http = stripe.HTTPXClient(timeout=10)
    yield stripe.StripeClient(
        localstripe.api_key,
        http_client=http,
        base_addresses={"api": double.api_base},
        max_network_retries=0,
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
    # localstripe's bare 404 (no code, no param) names nothing: ours to look at. Stripe's own
    # answer, resource_missing on payment_method, is a missing card (see the double's tests).
    with pytest.raises(GatewayConfigError):
        await gateway.charge(charge_request(attached.customer_id, "pm_does_not_exist"))
    with pytest.raises(GatewayConfigError, match="minor unit"):  # refused before any request
        await gateway.charge(charge_request(attached.customer_id, "pm_x", amount="25.001"))
    with pytest.raises(GatewayConfigError, match=r"minimum charge of 0\.50 USD"):
        await gateway.charge(charge_request(attached.customer_id, "pm_x", amount="0.49"))


async def test_connection_refused_is_transient() -> None:
    gw = StripeGateway("sk_test_x", f"http://127.0.0.1:{free_port()}", timeout_s=2)
    try:
        with pytest.raises(TransientGatewayError):
            await gw.charge(charge_request("cus_x", "pm_x"))
        with pytest.raises(TransientGatewayError):
            await gw.attach_card(account_id=account(), customer_id=None, payment_method="pm_x")
    finally:
        await gw.close()


# --- the Stripe double: idempotency, forgotten keys, lost responses, lists, detached cards ---


async def intents_of(sdk: stripe.StripeClient, customer_id: str) -> list[stripe.PaymentIntent]:
    page = await sdk.v1.payment_intents.list_async(params={"customer": customer_id, "limit": 100})
    return list(page.data)


async def visa_customer(gw: StripeGateway) -> tuple[str, str]:
    attached = await gw.attach_card(
        account_id=account(), customer_id=None, payment_method="pm_card_visa"
    )
    return attached.customer_id, attached.payment_method


async def find_then_charge(gw: StripeGateway, req: ChargeRequest) -> ChargeResult:
    """What a caller that lost an answer does once the key may have been pruned."""
    found = await gw.find_charge(req)
    return found if found is not None else await gw.charge(req)


async def test_lost_response_forgotten_key_find_then_charge_makes_one_intent(
    dgw: StripeGateway, dsdk: stripe.StripeClient, double: StripeDouble
) -> None:
    customer_id, pm = await visa_customer(dgw)
    req = charge_request(customer_id, pm)
    double.fail_next("lost_response")
    with pytest.raises(TransientGatewayError):
        await dgw.charge(req)
    [intent] = await intents_of(dsdk, customer_id)  # Stripe did charge; we never heard
    assert intent.status == "succeeded"
    double.forget_key(req.idempotency_key)  # more than 24 hours later
    assert not double.remembers(req.idempotency_key)

    result = await find_then_charge(dgw, req)
    assert result == ChargeSucceeded(gateway_ref=intent.id)
    assert [i.id for i in await intents_of(dsdk, customer_id)] == [intent.id]
    assert double.outcomes() == ["fault:lost_response (forwarded)"]  # no second create


async def test_a_forgotten_key_is_a_new_request(
    dgw: StripeGateway, dsdk: stripe.StripeClient, double: StripeDouble
) -> None:
    """Why find_charge exists: charge() alone, after pruning, pays twice (as at Stripe)."""
    customer_id, pm = await visa_customer(dgw)
    req = charge_request(customer_id, pm)
    first = await dgw.charge(req)
    double.forget_keys()
    second = await dgw.charge(req)
    assert isinstance(first, ChargeSucceeded) and isinstance(second, ChargeSucceeded)
    assert first.gateway_ref != second.gateway_ref
    assert len(await intents_of(dsdk, customer_id)) == 2
    # find_charge then answers with the newest intent that took money, not a third charge.
    assert await dgw.find_charge(req) == second


@pytest.mark.parametrize("fault", ["drop_request", "server_error", "rate_limit"])
async def test_find_charge_is_none_when_nothing_was_created(
    dgw: StripeGateway, dsdk: stripe.StripeClient, double: StripeDouble, fault: Any
) -> None:
    customer_id, pm = await visa_customer(dgw)
    earlier = await dgw.charge(charge_request(customer_id, pm))  # another attempt's intent
    assert isinstance(earlier, ChargeSucceeded)
    req = charge_request(customer_id, pm)
    double.fail_next(fault)
    with pytest.raises(TransientGatewayError):
        await dgw.charge(req)
    assert await dgw.find_charge(req) is None
    result = await find_then_charge(dgw, req)
    assert isinstance(result, ChargeSucceeded)
    intents = await intents_of(dsdk, customer_id)
    assert {i.id for i in intents} == {earlier.gateway_ref, result.gateway_ref}
    assert double.pending_faults() == 0


async def test_find_charge_with_created_after(dgw: StripeGateway, double: StripeDouble) -> None:
    customer_id, pm = await visa_customer(dgw)
    before = datetime.now(UTC)
    req = charge_request(customer_id, pm)
    charged = await dgw.charge(req)
    bounded = dataclasses.replace(req, created_after=before)
    assert await dgw.find_charge(bounded) == charged
    [listed] = [s for s in double.seen if s.method == "GET"][-1:]
    assert listed.outcome == "listed"
    tomorrow = dataclasses.replace(req, created_after=before + timedelta(days=1))
    assert await dgw.find_charge(tomorrow) is None


async def test_idempotent_replay_returns_the_same_intent(
    dgw: StripeGateway, dsdk: stripe.StripeClient, double: StripeDouble
) -> None:
    customer_id, pm = await visa_customer(dgw)
    req = charge_request(customer_id, pm)
    first, second = await dgw.charge(req), await dgw.charge(req)
    assert isinstance(first, ChargeSucceeded)
    assert second == first
    assert len(await intents_of(dsdk, customer_id)) == 1
    assert double.outcomes() == ["forwarded", "replayed"]
    with pytest.raises(GatewayConfigError):  # same key, other parameters: idempotency_error
        await dgw.charge(charge_request(customer_id, pm, amount="30.00", key=req.idempotency_key))
    assert double.outcomes()[-1] == "idempotency_error"


async def test_a_card_error_is_replayed_not_retried(
    dgw: StripeGateway, sdk: stripe.StripeClient, dsdk: stripe.StripeClient, double: StripeDouble
) -> None:
    pm = await card(sdk, "4000000000000341")  # attaches fine, declines every charge
    attached = await dgw.attach_card(account_id=account(), customer_id=None, payment_method=pm)
    req = charge_request(attached.customer_id, attached.payment_method)
    first, second = await dgw.charge(req), await dgw.charge(req)
    assert isinstance(first, ChargeFailed) and first.code == "card_declined"
    assert second == first
    assert double.outcomes() == ["forwarded", "replayed"]
    assert len(await intents_of(dsdk, attached.customer_id)) == 1
    found = await dgw.find_charge(req)  # the failed intent, classified the same way
    assert isinstance(found, ChargeFailed) and found.code == "card_declined"


async def test_a_key_in_progress_is_transient(
    dgw: StripeGateway, dsdk: stripe.StripeClient, double: StripeDouble
) -> None:
    customer_id, pm = await visa_customer(dgw)
    req = charge_request(customer_id, pm)
    double.forward_delay_s = 0.5
    outcomes = await asyncio.gather(dgw.charge(req), dgw.charge(req), return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == [
        "ChargeSucceeded",
        "TransientGatewayError",
    ]
    assert "in_use" in double.outcomes()
    double.forward_delay_s = 0.0
    [succeeded] = [o for o in outcomes if isinstance(o, ChargeSucceeded)]
    assert await dgw.charge(req) == succeeded  # the retry gets the first request's answer
    assert len(await intents_of(dsdk, customer_id)) == 1


async def test_a_detached_card_fails_with_no_payment_method(
    dgw: StripeGateway, dsdk: stripe.StripeClient, double: StripeDouble
) -> None:
    customer_id, pm = await visa_customer(dgw)
    await dsdk.v1.payment_methods.detach_async(pm)
    req = charge_request(customer_id, pm)
    result = await dgw.charge(req)
    assert isinstance(result, ChargeFailed)
    assert (result.code, result.gateway_ref) == (NO_PAYMENT_METHOD, None)
    assert "detached from a Customer" in result.message
    assert await intents_of(dsdk, customer_id) == []
    assert double.outcomes() == ["refused"]  # not saved: the key is still free
    assert await dgw.find_charge(req) is None
    assert result.message == DETACHED_AT_CONFIRM


async def test_the_double_refuses_to_attach_a_detached_card(
    dgw: StripeGateway, dsdk: stripe.StripeClient
) -> None:
    # "Detachment is permanent and irreversible": a new card is the customer's way out.
    customer_id, pm = await visa_customer(dgw)
    await dsdk.v1.payment_methods.detach_async(pm)
    with pytest.raises(stripe.InvalidRequestError, match="may not be used again"):
        await dsdk.v1.payment_methods.attach_async(pm, params={"customer": customer_id})


async def test_missing_payment_method_or_customer(dgw: StripeGateway) -> None:
    customer_id, _ = await visa_customer(dgw)
    result = await dgw.charge(charge_request(customer_id, "pm_does_not_exist"))
    assert isinstance(result, ChargeFailed) and result.code == NO_PAYMENT_METHOD
    assert "No such PaymentMethod" in result.message
    with pytest.raises(GatewayConfigError):  # a customer we do not know is ours to look at
        await dgw.charge(charge_request("cus_does_not_exist", "pm_card_visa"))


async def test_listing_is_filtered_by_customer_and_time(
    dgw: StripeGateway, dsdk: stripe.StripeClient
) -> None:
    alice, alice_pm = await visa_customer(dgw)
    bob, bob_pm = await visa_customer(dgw)
    a1 = await dgw.charge(charge_request(alice, alice_pm))
    b1 = await dgw.charge(charge_request(bob, bob_pm))
    a2 = await dgw.charge(charge_request(alice, alice_pm, amount="30.00"))
    assert isinstance(a1, ChargeSucceeded) and isinstance(a2, ChargeSucceeded)
    assert isinstance(b1, ChargeSucceeded)

    alices = await intents_of(dsdk, alice)
    assert [i.id for i in alices] == [a2.gateway_ref, a1.gateway_ref]  # newest first
    assert all(i.customer == alice for i in alices)
    assert [i.id for i in await intents_of(dsdk, bob)] == [b1.gateway_ref]

    now = int(time.time())
    future = await dsdk.v1.payment_intents.list_async(
        params={"customer": alice, "created": {"gte": now + 3600}}
    )
    assert future.data == [] and not future.has_more
    past = await dsdk.v1.payment_intents.list_async(
        params={"customer": alice, "created": {"lt": now - 3600}}
    )
    assert past.data == []
    recent = await dsdk.v1.payment_intents.list_async(
        params={"customer": alice, "created": {"gte": now - 3600, "lte": now + 3600}}
    )
    assert len(recent.data) == 2

    first = await dsdk.v1.payment_intents.list_async(params={"customer": alice, "limit": 1})
    assert [i.id for i in first.data] == [a2.gateway_ref] and first.has_more
    rest = await dsdk.v1.payment_intents.list_async(
        params={"customer": alice, "limit": 1, "starting_after": first.data[0].id}
    )
    assert [i.id for i in rest.data] == [a1.gateway_ref] and not rest.has_more
    back = await dsdk.v1.payment_intents.list_async(
        params={"customer": alice, "limit": 1, "ending_before": rest.data[0].id}
    )
    assert [i.id for i in back.data] == [a2.gateway_ref]

    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter"):
        unknown: Any = {"status": "succeeded"}  # not a list filter of PaymentIntents
        await dsdk.v1.payment_intents.list_async(params=unknown)
    with pytest.raises(stripe.InvalidRequestError):
        await dsdk.v1.payment_intents.list_async(params={"limit": 101})


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
                "query": dict(request.query),
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
        (
            400,
            {
                "error": {
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "param": "customer",
                    "message": "No such customer: 'cus_1'",
                }
            },
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


# Stripe's answers for a card on file that is detached or gone: a failed attempt, not ours.
DETACHED = (
    "The provided PaymentMethod was previously used with a PaymentIntent without Customer "
    "attachment, shared with a connected account without Customer attachment, or was detached "
    "from a Customer. It may not be used again. To use a PaymentMethod multiple times, you must "
    "attach it to a Customer first."
)


@pytest.mark.parametrize(
    "error",
    [
        {"type": "invalid_request_error", "message": DETACHED},  # no code, no param
        {
            "type": "invalid_request_error",
            "param": "payment_method",
            "message": "The customer does not have a payment method with the ID pm_1. The "
            "payment method must be attached to the customer.",
        },
        {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "param": "payment_method",
            "message": "No such PaymentMethod: 'pm_1'",
        },
    ],
)
async def test_a_card_gone_at_stripe_is_no_payment_method(
    fake: FakeStripe, fake_gateway: StripeGateway, error: dict[str, Any]
) -> None:
    fake.replies.append((400, {"error": error}))
    result = await fake_gateway.charge(charge_request("cus_1", "pm_1"))
    assert result == ChargeFailed(code=NO_PAYMENT_METHOD, message=error["message"])


async def test_an_unrelated_bad_request_is_still_ours(
    fake: FakeStripe, fake_gateway: StripeGateway
) -> None:
    # A detached-sounding message about another parameter is not the card on file.
    body = {"type": "invalid_request_error", "param": "customer", "message": DETACHED}
    fake.replies.append((400, {"error": body}))
    with pytest.raises(GatewayConfigError):
        await fake_gateway.charge(charge_request("cus_1", "pm_1"))


def listing(*intents: dict[str, Any], has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "url": "/v1/payment_intents", "has_more": has_more, "data": intents}


def keyed(pi: str, key: str, status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    return {
        "id": pi,
        "object": "payment_intent",
        "status": status,
        "amount": 2550,
        "currency": "usd",
        "metadata": {"idempotency_key": key, "account_id": "acct-ls"},
        **extra,
    }


async def test_find_charge_request_shape_and_pagination(
    fake: FakeStripe, fake_gateway: StripeGateway
) -> None:
    after = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    req = dataclasses.replace(charge_request("cus_1", "pm_1"), created_after=after)
    fake.replies += [
        (200, listing(keyed("pi_a", "other-key"), keyed("pi_b", "other"), has_more=True)),
        (200, listing(keyed("pi_c", req.idempotency_key))),
    ]
    assert await fake_gateway.find_charge(req) == ChargeSucceeded("pi_c")
    floor = str(int(after.timestamp()) - 300)
    assert [(r["method"], r["path"], r["query"]) for r in fake.requests] == [
        (
            "GET",
            "/v1/payment_intents",
            {"customer": "cus_1", "limit": "100", "created[gte]": floor},
        ),
        (
            "GET",
            "/v1/payment_intents",
            {"customer": "cus_1", "limit": "100", "created[gte]": floor, "starting_after": "pi_b"},
        ),
    ]
    assert all(r["idempotency_key"] is None for r in fake.requests)


async def test_find_charge_classifies_like_charge(
    fake: FakeStripe, fake_gateway: StripeGateway
) -> None:
    req = charge_request("cus_1", "pm_1")
    error = {"code": "card_declined", "decline_code": "insufficient_funds", "message": "No."}
    fake.replies.append(
        (
            200,
            listing(
                keyed(
                    "pi_f", req.idempotency_key, "requires_payment_method", last_payment_error=error
                )
            ),
        )
    )
    assert await fake_gateway.find_charge(req) == ChargeFailed(
        code="insufficient_funds", message="No.", gateway_ref="pi_f"
    )
    fake.replies.append((200, listing(keyed("pi_p", req.idempotency_key, "processing"))))
    with pytest.raises(TransientGatewayError):
        await fake_gateway.find_charge(req)
    fake.replies.append((200, listing(keyed("pi_x", req.idempotency_key, "requires_action"))))
    found = await fake_gateway.find_charge(req)
    assert isinstance(found, ChargeFailed) and found.code == "authentication_required"


async def test_find_charge_prefers_the_intent_that_took_money(
    fake: FakeStripe, fake_gateway: StripeGateway
) -> None:
    req = charge_request("cus_1", "pm_1")
    fake.replies.append(
        (
            200,
            listing(
                keyed("pi_new", req.idempotency_key, "requires_payment_method"),
                keyed("pi_old", req.idempotency_key, "succeeded"),
            ),
        )
    )
    assert await fake_gateway.find_charge(req) == ChargeSucceeded("pi_old")


async def test_find_charge_nothing_found(fake: FakeStripe, fake_gateway: StripeGateway) -> None:
    req = charge_request("cus_1", "pm_1")
    fake.replies.append((200, listing(keyed("pi_a", "another-key"))))
    assert await fake_gateway.find_charge(req) is None
    assert "created[gte]" not in fake.requests[0]["query"]  # no bound without created_after
    fake.replies.append((200, listing()))
    assert await fake_gateway.find_charge(req) is None


async def test_find_charge_without_a_customer_asks_nothing(
    fake: FakeStripe, fake_gateway: StripeGateway
) -> None:
    assert await fake_gateway.find_charge(charge_request(None, "pm_1")) is None
    assert fake.requests == []


async def test_find_charge_with_other_parameters_is_ours(
    fake: FakeStripe, fake_gateway: StripeGateway
) -> None:
    req = charge_request("cus_1", "pm_1", amount="30.00")
    fake.replies.append((200, listing(keyed("pi_a", req.idempotency_key))))  # 25.50 USD
    with pytest.raises(GatewayConfigError, match="idempotency key"):
        await fake_gateway.find_charge(req)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, {"error": {"type": "api_error", "message": "boom"}}, TransientGatewayError),
        (
            429,
            {"error": {"type": "invalid_request_error", "code": "rate_limit"}},
            TransientGatewayError,
        ),
        (
            401,
            {"error": {"type": "invalid_request_error", "message": "bad key"}},
            GatewayConfigError,
        ),
    ],
)
async def test_find_charge_errors(
    fake: FakeStripe,
    fake_gateway: StripeGateway,
    status: int,
    body: Any,
    expected: type[GatewayError],
) -> None:
    fake.replies.append((status, body))
    with pytest.raises(expected):
        await fake_gateway.find_charge(charge_request("cus_1", "pm_1"))
