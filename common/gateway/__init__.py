"""Payment gateways: the interface (base), a Redis-backed simulator, Stripe, and the factory."""

from __future__ import annotations

from common.gateway.base import (
    NO_PAYMENT_METHOD,
    AttachedCard,
    CardRejected,
    ChargeFailed,
    ChargeRequest,
    ChargeResult,
    ChargeSucceeded,
    GatewayConfigError,
    GatewayError,
    PaymentGateway,
    TransientGatewayError,
)
from common.gateway.factory import build_gateway

__all__ = [
    "NO_PAYMENT_METHOD",
    "AttachedCard",
    "CardRejected",
    "ChargeFailed",
    "ChargeRequest",
    "ChargeResult",
    "ChargeSucceeded",
    "GatewayConfigError",
    "GatewayError",
    "PaymentGateway",
    "TransientGatewayError",
    "build_gateway",
]
