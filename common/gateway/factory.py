"""Pick the payment gateway named by PAYMENT_GATEWAY."""

from __future__ import annotations

import redis.asyncio as aioredis

from common.gateway.base import GatewayConfigError, PaymentGateway
from common.gateway.simulated import SimulatedGateway
from common.gateway.stripe_gateway import StripeGateway
from config.settings import Settings


def build_gateway(settings: Settings, redis: aioredis.Redis) -> PaymentGateway:
    """Build the gateway for this process; `redis` is used by the simulated one only, unless
    CONTACTO_SIMULATED_REDIS_URL gives it a Redis of its own.

    Raises GatewayConfigError when PAYMENT_GATEWAY=stripe and STRIPE_API_KEY is missing, so that
    a worker refuses to start rather than failing on its first charge.
    """
    if settings.payment_gateway == "simulated":
        if settings.simulated_gateway_redis_url:
            # Its own Redis (CONTACTO_SIMULATED_REDIS_URL): the gateway owns that client and
            # closes it in close(), since no caller knows of it.
            own = aioredis.Redis.from_url(settings.simulated_gateway_redis_url)
            return SimulatedGateway(own, prefix=settings.simulated_gateway_prefix, owns_redis=True)
        return SimulatedGateway(redis, prefix=settings.simulated_gateway_prefix)
    if settings.payment_gateway == "stripe":
        return build_stripe_gateway(settings)
    raise GatewayConfigError(f"unknown PAYMENT_GATEWAY {settings.payment_gateway!r}")


def build_stripe_gateway(settings: Settings) -> StripeGateway:
    """The Stripe gateway (what PAYMENT_GATEWAY=stripe builds), for a process that needs Stripe
    itself rather than any gateway: the relay's sweep of on-session confirmations."""
    key = settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else ""
    if not key:
        raise GatewayConfigError("PAYMENT_GATEWAY=stripe needs STRIPE_API_KEY to be set")
    return StripeGateway(key, settings.stripe_api_base, settings.gateway_timeout_s)
