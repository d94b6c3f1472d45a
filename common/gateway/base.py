"""The payment gateway interface: one small protocol, two implementations (simulated, stripe).

Outcome classes (README, "Auto-recharge rules"):
    succeeded                                   -> ChargeSucceeded
    declined, insufficient funds, expired card,
    authentication required                     -> ChargeFailed (a failed attempt: the ladder)
    the card on file detached or gone           -> ChargeFailed("no_payment_method")
    timeout, connection error, 429, 5xx,
    idempotency_key_in_use                      -> raise TransientGatewayError (same key again)
    bad API key, invalid request                -> raise GatewayConfigError (ours: dead-letter)

An idempotency key protects a retry for 24 hours at Stripe, no longer ("You can remove keys from
the system automatically after they're at least 24 hours old. We generate a new request if a key
is reused after the original is pruned": docs.stripe.com/api/idempotent_requests). A caller that
lost an answer and may retry later than that asks find_charge() first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final, Protocol

# ChargeFailed.code when the payment method on file can no longer be charged (detached at the
# gateway, or unknown to it): the customer must register a card again; retrying cannot help.
NO_PAYMENT_METHOD: Final = "no_payment_method"

# find_charge() looks this much further back than ChargeRequest.created_after: the bound comes from
# our clock and the charge's creation time from the gateway's, and a missed charge would be paid
# twice while a longer look costs only a few more rows.
CREATED_AFTER_MARGIN_S: Final = 300


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    idempotency_key: str  # derived from our own row ids, stored before the call
    account_id: str
    amount: Decimal  # fits the currency's minor unit (checked before the request is made)
    currency: str  # ISO 4217, upper case
    customer_id: str | None
    payment_method: str
    description: str = ""
    # find_charge() only: no charge for this key can be older than this (the attempt's first
    # call), so the search can skip the customer's earlier history. Not part of the request sent,
    # so not compared by idempotency. Naive values are taken as UTC.
    created_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class ChargeSucceeded:
    gateway_ref: str  # e.g. the PaymentIntent id


@dataclass(frozen=True, slots=True)
class ChargeFailed:
    code: str  # card_declined, insufficient_funds, authentication_required, ...
    message: str
    gateway_ref: str | None = None


ChargeResult = ChargeSucceeded | ChargeFailed


def created_floor(request: ChargeRequest) -> int | None:
    """The Unix time (seconds) before which find_charge() need not look, or None for no bound."""
    if request.created_after is None:
        return None
    after = request.created_after
    if after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    return int(after.timestamp()) - CREATED_AFTER_MARGIN_S


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

        Same key and same parameters: the same result, never a second charge (while the
        gateway still remembers the key: 24 hours at Stripe).
        """
        ...

    async def find_charge(self, request: ChargeRequest) -> ChargeResult | None:
        """What became of an earlier call made with request.idempotency_key whose answer we never
        got: the charge it created, found by the key in the charge's metadata whatever the key's
        age (Stripe prunes idempotency keys after 24 h), classified like charge()'s answer; None
        when no charge exists. Raises TransientGatewayError / GatewayConfigError like charge().
        """
        ...

    async def close(self) -> None: ...
