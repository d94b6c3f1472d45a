"""The charge worker's service with the Stripe gateway, against localstripe behind our Stripe
double (which adds what localstripe ignores: idempotency keys, forgetting them, list filters)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import stripe

from common.gateway import TransientGatewayError
from common.gateway.stripe_gateway import StripeGateway
from common.recharge.charging import run_to_completion
from common.recharge.settings import attach_card
from tests.support.factories import create_account, new_id
from tests.support.localstripe import Localstripe
from tests.support.pipeline import LIMITS, TEST_SETTINGS, charges, debit
from tests.support.stripe_double import StripeDouble

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
async def gateway(localstripe: Localstripe, double: StripeDouble) -> AsyncIterator[StripeGateway]:
    double.reset()
    gw = StripeGateway(localstripe.api_key, double.api_base, timeout_s=10)
    yield gw
    await gw.close()
    double.reset()


@pytest.fixture
async def sdk(localstripe: Localstripe, double: StripeDouble) -> AsyncIterator[Any]:
    http = stripe.HTTPXClient(timeout=10)
    yield stripe.StripeClient(
        localstripe.api_key, http_client=http, base_addresses={"api": double.api_base}
    )
    await http.close_async()  # type: ignore[no-untyped-call]


async def test_a_charge_resumed_after_its_key_was_forgotten_is_not_made_twice(
    engine: Any, conn: Any, gateway: StripeGateway, double: StripeDouble, sdk: Any
) -> None:
    """Regression: Stripe prunes idempotency keys after 24 h. A pending charge resumed later
    (a dead letter requeued after a fix, a queue left unconsumed for a day, a worker killed
    after its call) replayed a forgotten key: a second PaymentIntent, one credit."""
    acct = new_id()
    await create_account(conn, acct, balance="100", threshold="100", recharge="25")
    card = await attach_card(conn, gateway, acct, "pm_card_visa", TEST_SETTINGS)
    run_id = (await debit(engine, acct, "1")).runs_started[acct]
    double.fail_next("lost_response")  # Stripe charged; the answer never came back
    with pytest.raises(TransientGatewayError):
        await run_to_completion(engine, gateway, run_id, LIMITS)
    double.forget_keys()  # ... and the message is redelivered a day later
    assert await run_to_completion(engine, gateway, run_id, LIMITS) == "succeeded"
    intents = (await sdk.v1.payment_intents.list_async(params={"customer": card.customer_id})).data
    [charge] = await charges(conn, acct)
    assert [(i.id, i.status, i.amount) for i in intents] == [
        (charge["gateway_ref"], "succeeded", 2500)
    ]
    assert charge["status"] == "succeeded" and charge["gateway_calls"] == 2
