"""No secret, card number or password in any log line, whatever the code path logs."""

from __future__ import annotations

import io
import logging
from decimal import Decimal
from typing import Any

import pytest
import structlog

from common.gateway import TransientGatewayError
from common.gateway.stripe_gateway import StripeGateway
from common.logging import configure_logging
from common.recharge.charging import run_to_completion
from config.settings import Settings
from tests.support.factories import create_account, new_id
from tests.support.localstripe import free_port
from tests.support.pipeline import LIMITS

API_KEY = "sk_test_51SuperSecretKeyNeverToBeLogged"
CARD = "4242424242424242"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def log_lines() -> Any:
    stream = io.StringIO()
    configure_logging("json")
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    configure_logging("json")


def assert_clean(text: str) -> None:
    assert text.strip(), "the test must have logged something"
    for secret in (API_KEY, CARD, "4242 4242 4242 4242", PASSWORD, "SuperSecretKey"):
        assert secret not in text


def test_secret_fields_and_values_are_scrubbed(log_lines: io.StringIO) -> None:
    log = structlog.get_logger("test")
    log.info("gateway.configured", api_key=API_KEY, password=PASSWORD, card_number=CARD)
    log.info("payload.seen", payload={"card": {"number": CARD, "cvc": "123"}, "note": API_KEY})
    log.error("charge.failed", error=f"card {CARD} refused with key {API_KEY}")
    log.warning("oops", detail=f"4242 4242 4242 4242 and Bearer {API_KEY}")
    logging.getLogger("stripe").error("library says %s", API_KEY)
    text = log_lines.getvalue()
    assert_clean(text)
    assert text.count("[redacted]") >= 7


def test_settings_never_print_the_stripe_key() -> None:
    settings = Settings(STRIPE_API_KEY=API_KEY)
    assert API_KEY not in repr(settings) and API_KEY not in str(settings.model_dump())


async def test_a_failing_stripe_charge_logs_no_key(
    log_lines: io.StringIO, engine: Any, conn: Any
) -> None:
    acct = new_id()
    await create_account(
        conn, acct, balance="10", threshold="100", recharge="20", payment_method="pm_card_visa"
    )
    await conn.execute("UPDATE accounts SET gateway_customer_id = 'cus_x' WHERE id = $1", acct)
    run_id = await conn.fetchval(
        "INSERT INTO recharge_runs (account_id, kind, trigger, tier, target_amount, "
        "recharge_amount, max_charges) VALUES ($1, 'auto', 'threshold', 0, 100, 20, 10) "
        "RETURNING id",
        acct,
    )
    # Nothing listens on that port: a connection error, logged with its message.
    gateway = StripeGateway(API_KEY, f"http://127.0.0.1:{free_port()}", 2.0)
    try:
        with pytest.raises(TransientGatewayError):
            await run_to_completion(engine, gateway, run_id, LIMITS)
    finally:
        await gateway.close()
    text = log_lines.getvalue()
    assert "charge.transient_error" in text
    assert_clean(text)
    assert (
        Decimal(await conn.fetchval("SELECT count(*) FROM charges WHERE run_id = $1", run_id)) == 1
    )
