"""The payment gateway interface: one small protocol, two implementations (simulated, stripe).

Outcome classes (DESIGN.md):
    succeeded                                   -> ChargeSucceeded
    declined, insufficient funds, expired card,
    authentication required                     -> ChargeFailed (a failed attempt: the ladder)
    timeout, connection error, 429, 5xx,
    idempotency_key_in_use                      -> raise TransientGatewayError (same key again)
    bad API key, invalid request                -> raise GatewayConfigError (ours: dead-letter)
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    idempotency_key: str  # derived from our own row ids, stored before the call
    account_id: str
    amount: Decimal  # fits the currency's minor unit (checked before the request is made)
    currency: str  # ISO 4217, upper case
    customer_id: str | None
    payment_method: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class ChargeSucceeded:
    gateway_ref: str  # e.g. the PaymentIntent id


@dataclass(frozen=True, slots=True)
class ChargeFailed:
    code: str  # card_declined, insufficient_funds, authentication_required, ...
    message: str
    gateway_ref: str | None = None


ChargeResult = ChargeSucceeded | ChargeFailed


class GatewayError(Exception):
    """Base of the errors a gateway raises (never for a declined card: that is a result)."""


class TransientGatewayError(GatewayError):
    """Retry the same attempt with the same idempotency key, with backoff."""


class GatewayConfigError(GatewayError):
    """Our own misconfiguration: stop, dead-letter, alert; the customer's tier is untouched."""


class CardRejected(GatewayError):
    """A card refused when it is attached (not a charge attempt)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class AttachedCard:
    customer_id: str
    payment_method: str  # the gateway's id of the attached method (may differ from input)


class PaymentGateway(Protocol):
    name: str

    async def attach_card(
        self, *, account_id: str, customer_id: str | None, payment_method: str
    ) -> AttachedCard:
        """Create the customer when `customer_id` is None, attach the card, return both ids.

        Raises CardRejected when the card is refused at attach time.
        """
        ...

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """Charge off-session with `request.idempotency_key`.

        Same key and same parameters: the same result, never a second charge.
        """
        ...

    async def close(self) -> None: ...
