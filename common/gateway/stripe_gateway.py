"""Stripe (or a Stripe-compatible server such as localstripe) through the SDK's async methods.

Only `*_async` calls: every async actor of a worker process shares one event loop, and the
SDK's synchronous client would stall all of them for the length of a request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

import stripe
import structlog
from stripe.params import (
    PaymentIntentCreateParams,
    PaymentIntentListParams,
    SetupIntentCreateParams,
)

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
    TransientGatewayError,
    created_floor,
)
from common.gateway.currencies import charge_refusal, to_gateway_amount
from common.money import MoneyError

log = structlog.get_logger(__name__)

_MAX_KEY_LENGTH: Final = 255  # Stripe refuses longer idempotency keys
_MAX_METADATA_VALUE: Final = 500
_SECRET: Final = re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9*]+")
# Codes that mean "another request holds this object or key right now": the same request,
# sent again later with the same key, is the right answer.
_BUSY_CODES: Final = frozenset({"idempotency_key_in_use", "lock_timeout", "rate_limit"})
# Stripe's answer for a PaymentIntent confirmed with a PaymentMethod detached from its customer is
# a 400 invalid_request_error with no code at all, only this text ("The provided PaymentMethod
# was previously used with a PaymentIntent without Customer attachment, shared with a connected
# account without Customer attachment, or was detached from a Customer. It may not be used
# again. ..."). A method attached to nobody or to another customer is refused with "The customer
# does not have a payment method with the ID pm_...". The text is the only signal, so match the
# distinctive parts of both, case-insensitively.
_DETACHED_TEXT: Final = re.compile(
    r"detached from a customer|may not be used again"
    r"|does not have a payment method with the id|must be attached to the customer",
    re.IGNORECASE,
)
_LIST_PAGE: Final = 100  # Stripe's largest page


def _safe(message: object) -> str:
    # Stripe masks keys in its own messages; a proxy or a fake server might not.
    return _SECRET.sub("[redacted]", str(message or ""))[:500]


def _bounded_key(key: str) -> str:
    if len(key) <= _MAX_KEY_LENGTH:
        return key
    # Deterministic, so every retry of the same logical request still sends the same key.
    return f"{key[:180]}-sha256-{hashlib.sha256(key.encode()).hexdigest()}"


def _error_code(exc: stripe.StripeError) -> str | None:
    if exc.code:
        return exc.code
    return exc.error.code if exc.error is not None else None


def gateway_error(exc: stripe.StripeError) -> GatewayError:
    """Map an SDK error (other than a card error) to transient or ours (base.py outcome table)."""
    status, code = exc.http_status, _error_code(exc)
    detail = f"stripe {type(exc).__name__} (HTTP {status}, code {code}): {_safe(exc.user_message)}"
    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError):
        # APIConnectionError covers connect errors and timeouts: the request may or may not
        # have reached Stripe, and only a replay with the same key can tell.
        return TransientGatewayError(detail)
    if code in _BUSY_CODES:
        return TransientGatewayError(detail)
    if isinstance(exc, stripe.APIError) and (
        status is None or status < 400 or status >= 500 or status in (408, 409)
    ):
        # Stripe sends 409 for idempotency_key_in_use; the SDK maps it to a plain APIError.
        # Below 400 the body was unreadable: the request may have worked, a replay will say.
        return TransientGatewayError(detail)
    # Authentication, permission, invalid request, idempotency_error (same key, other
    # parameters) and anything unrecognised: retrying cannot help, a person must look.
    return GatewayConfigError(detail)


def _no_payment_method(exc: stripe.StripeError) -> ChargeFailed | None:
    """ChargeFailed(no_payment_method) when Stripe says the card on file is detached or gone.

    That is the customer's to fix (register a card again), never ours: a failed attempt, not a
    dead letter. "Gone" is resource_missing naming the payment_method parameter; the same code on
    any other parameter (the customer, say) stays a configuration error.
    """
    if not isinstance(exc, stripe.InvalidRequestError):
        return None
    err = exc.error
    param = getattr(err, "param", None) if err is not None else None
    message = str(exc.user_message or "")
    if (_error_code(exc) == "resource_missing" and param == "payment_method") or (
        _DETACHED_TEXT.search(message) and param in (None, "payment_method")
    ):
        return ChargeFailed(
            code=NO_PAYMENT_METHOD,
            message=_safe(message) or "The payment method on file is no longer available.",
        )
    return None


@contextmanager
def _retrieval_errors(missing: str) -> Iterator[None]:
    """Reading an object by id: an unknown id is CardRejected("resource_missing", missing),
    any other SDK error is mapped like a charge's (gateway_error)."""
    try:
        yield
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404 or _error_code(exc) == "resource_missing":
            raise CardRejected("resource_missing", missing) from exc
        raise gateway_error(exc) from exc
    except stripe.StripeError as exc:
        raise gateway_error(exc) from exc


def _decline(exc: stripe.CardError) -> ChargeFailed:
    err = exc.error
    code = _error_code(exc) or "card_declined"
    if err is not None and err.decline_code and err.decline_code != "generic_decline":
        # Stripe answers code=card_declined, decline_code=insufficient_funds: keep the reason.
        code = err.decline_code
    ref: str | None = None
    if err is not None:
        intent = err.payment_intent
        ref = getattr(intent, "id", None) if intent is not None else err.charge
    return ChargeFailed(code=code, message=_safe(exc.user_message), gateway_ref=ref)


def _metadata_key(intent: stripe.PaymentIntent) -> str | None:
    # Read leniently: a null or absent metadata (a fake server) is not an error.
    metadata = getattr(intent, "metadata", None)
    if not metadata or "idempotency_key" not in metadata:
        return None
    return str(metadata["idempotency_key"])


def classify_intent(intent: stripe.PaymentIntent) -> ChargeResult:
    status = intent.status
    if status == "succeeded":
        return ChargeSucceeded(gateway_ref=intent.id)
    if status == "requires_action":
        # Real Stripe answers an off-session 3DS card with a CardError; localstripe returns
        # the intent waiting for the customer instead. Both are the same failed attempt.
        return ChargeFailed(
            code="authentication_required",
            message="The card requires the customer to authenticate.",
            gateway_ref=intent.id,
        )
    if status == "requires_payment_method":
        # Stripe may omit null keys, and a missing key is an AttributeError: read leniently.
        err = getattr(intent, "last_payment_error", None)
        decline_code = getattr(err, "decline_code", None)
        if decline_code == "generic_decline":
            decline_code = None
        return ChargeFailed(
            code=decline_code or getattr(err, "code", None) or "card_declined",
            message=_safe(getattr(err, "message", None) or "The payment failed."),
            gateway_ref=intent.id,
        )
    if status == "canceled":
        return ChargeFailed(
            code="canceled", message="The payment was canceled.", gateway_ref=intent.id
        )
    if status == "processing":
        # Not settled yet: the same key replays the same intent, whose status we re-read then.
        raise TransientGatewayError(f"payment {intent.id} is still processing")
    # requires_confirmation / requires_capture: our request did not ask for what we meant.
    raise GatewayConfigError(f"unexpected PaymentIntent status {status!r} for {intent.id}")


@dataclass(frozen=True, slots=True)
class CardSetup:
    customer_id: str
    client_secret: str = field(repr=False)  # lets a browser confirm the intent: not for logs


@dataclass(frozen=True, slots=True)
class IntentState:
    """A PaymentIntent as the console's on-session confirmation needs it (console 3-D Secure)."""

    id: str
    status: str  # Stripe's: requires_action, requires_payment_method, succeeded, ...
    amount: int  # in Stripe's minor unit of `currency` (common/gateway/currencies.py)
    currency: str  # lower case, as Stripe writes it
    payment_method: str | None
    idempotency_key: str | None  # from the metadata charge() wrote; None if absent
    client_secret: str = field(repr=False)  # lets a browser confirm the intent: not for logs


@dataclass(frozen=True, slots=True)
class SetUpCard:
    payment_method: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None


class StripeGateway:
    name = "stripe"

    def __init__(
        self,
        api_key: str,
        api_base: str | None,
        timeout_s: float,
        *,
        local_server: bool | None = None,
    ) -> None:
        """`local_server`: talk to a Stripe-compatible fake (localstripe), which refuses some of
        Stripe's parameters. By default, true exactly when `api_base` overrides Stripe's address,
        as STRIPE_API_BASE is documented for a local Stripe-compatible server.
        """
        if not api_key:
            raise GatewayConfigError("STRIPE_API_KEY is not set (PAYMENT_GATEWAY=stripe)")
        self._local_server = api_base is not None if local_server is None else local_server
        self._http = stripe.HTTPXClient(timeout=timeout_s)
        self._client = stripe.StripeClient(
            api_key,
            http_client=self._http,
            base_addresses={"api": api_base} if api_base else None,
            # Our own retry loop owns retries, always with the same key; SDK retries would only
            # hide the transient error from it and hold the actor for their backoff.
            max_network_retries=0,
        )

    def __repr__(self) -> str:
        return "StripeGateway()"  # never the key

    @staticmethod
    def _options(idempotency_key: str | None) -> stripe.RequestOptions:
        options: stripe.RequestOptions = {"max_network_retries": 0}
        if idempotency_key is not None:
            options["idempotency_key"] = _bounded_key(idempotency_key)
        return options

    async def _customer(self, account_id: str, customer_id: str | None) -> str:
        if customer_id is not None:
            return customer_id
        # A fixed key: a retried or concurrent attach for the account gets the same
        # customer back instead of a second one (within Stripe's 24 h key lifetime).
        customer = await self._client.v1.customers.create_async(
            params={"metadata": {"account_id": account_id}},
            options=self._options(f"account-{account_id}-customer"),
        )
        return customer.id

    async def create_setup_intent(self, *, account_id: str, customer_id: str | None) -> CardSetup:
        """A SetupIntent for the console's card form: Stripe.js confirms it in the browser
        with the card the customer typed, so the number never reaches our server."""
        try:
            customer_id = await self._customer(account_id, customer_id)
            params: SetupIntentCreateParams = {"customer": customer_id, "usage": "off_session"}
            intent = await self._client.v1.setup_intents.create_async(
                params=params, options=self._options(None)
            )
        except stripe.StripeError as exc:
            raise gateway_error(exc) from exc
        assert intent.client_secret is not None
        return CardSetup(customer_id=customer_id, client_secret=intent.client_secret)

    async def setup_intent_card(self, setup_intent_id: str, customer_id: str) -> SetUpCard:
        """The card a confirmed SetupIntent of this customer saved, with its display details.
        A SetupIntent of another customer, or not succeeded, is refused (CardRejected)."""
        with _retrieval_errors("The card was not confirmed."):
            intent = await self._client.v1.setup_intents.retrieve_async(
                setup_intent_id, options=self._options(None)
            )
            if intent.customer != customer_id or intent.status != "succeeded":
                raise CardRejected("setup_incomplete", "The card was not confirmed.")
            pm_id = intent.payment_method
            pm_id = pm_id if isinstance(pm_id, str) or pm_id is None else pm_id.id
            if pm_id is None:
                raise CardRejected("setup_incomplete", "The card was not confirmed.")
            method = await self._client.v1.payment_methods.retrieve_async(
                pm_id, options=self._options(None)
            )
        card = method.card
        return SetUpCard(
            payment_method=method.id,
            brand=str(card.brand) if card is not None else None,
            last4=str(card.last4) if card is not None else None,
            exp_month=int(card.exp_month) if card is not None else None,
            exp_year=int(card.exp_year) if card is not None else None,
        )

    async def retrieve_intent(self, payment_intent: str) -> IntentState:
        """A PaymentIntent's state, read now (never from a cached answer). An unknown id raises
        CardRejected("resource_missing"); anything else like any other call."""
        with _retrieval_errors("The payment was not found."):
            intent = await self._client.v1.payment_intents.retrieve_async(
                payment_intent, options=self._options(None)
            )
        pm = getattr(intent, "payment_method", None)  # localstripe omits it once refused
        pm_id = pm if isinstance(pm, str) or pm is None else pm.id
        assert intent.client_secret is not None
        return IntentState(
            id=intent.id,
            status=str(intent.status),
            amount=int(intent.amount),
            currency=str(intent.currency),
            payment_method=pm_id,
            idempotency_key=_metadata_key(intent),
            client_secret=intent.client_secret,
        )

    async def attach_card(
        self, *, account_id: str, customer_id: str | None, payment_method: str
    ) -> AttachedCard:
        try:
            customer_id = await self._customer(account_id, customer_id)
            attached = await self._client.v1.payment_methods.attach_async(
                payment_method,
                params={"customer": customer_id},
                options=self._options(
                    f"account-{account_id}-attach-{payment_method}-{customer_id}"
                ),
            )
            # Setting a field is idempotent by nature: no key, so the newest card always wins.
            await self._client.v1.customers.update_async(
                customer_id,
                params={"invoice_settings": {"default_payment_method": attached.id}},
                options=self._options(None),
            )
        except stripe.CardError as exc:
            raise CardRejected(
                _error_code(exc) or "card_declined", _safe(exc.user_message)
            ) from exc
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404 or _error_code(exc) == "resource_missing":
                # Nearly always a payment method id mistyped by whoever registers the card.
                raise CardRejected("resource_missing", _safe(exc.user_message)) from exc
            raise gateway_error(exc) from exc
        except stripe.StripeError as exc:
            raise gateway_error(exc) from exc
        log.info("gateway.card_attached", account_id=account_id, customer_id=customer_id)
        return AttachedCard(customer_id=customer_id, payment_method=attached.id)

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        refusal = charge_refusal(request.amount, request.currency)
        if refusal is not None:
            # Stripe would answer 400 (amount_too_small, invalid_charge_amount_...): ours to fix.
            raise GatewayConfigError(f"invalid charge amount: {refusal}")
        amount = to_gateway_amount(request.amount, request.currency)
        metadata = {"account_id": request.account_id, "idempotency_key": request.idempotency_key}
        if request.description:
            # localstripe refuses a top-level `description` ("Unexpected description").
            metadata["description"] = request.description[:_MAX_METADATA_VALUE]
        params: PaymentIntentCreateParams = {
            "amount": amount,
            "currency": request.currency.lower(),
            "payment_method": request.payment_method,
            "confirm": True,
            # Accepted here by localstripe (it refuses it only on a separate /confirm).
            "off_session": True,
            "metadata": metadata,
        }
        if request.customer_id:
            params["customer"] = request.customer_id
        if not self._local_server:
            # Stripe's API version pinned by SDK 16 refuses `payment_method_types`; dynamic
            # payment methods would want a return_url on confirm unless redirects are ruled
            # out. localstripe refuses `automatic_payment_methods` altogether.
            params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params=params, options=self._options(request.idempotency_key)
            )
            if intent.status == "processing":
                # A replay returns the cached first response; the intent itself may have moved on.
                intent = await self._client.v1.payment_intents.retrieve_async(
                    intent.id, options=self._options(None)
                )
            result = classify_intent(intent)
        except stripe.CardError as exc:
            result = _decline(exc)
        except stripe.StripeError as exc:
            gone = _no_payment_method(exc)
            if gone is None:
                error = gateway_error(exc)
                log.warning(
                    "gateway.charge_error",
                    idempotency_key=request.idempotency_key,
                    error_class=type(error).__name__,
                    detail=str(error),
                )
                raise error from exc
            result = gone
        log.info(
            "gateway.charge_result",
            idempotency_key=request.idempotency_key,
            outcome="succeeded" if isinstance(result, ChargeSucceeded) else result.code,
            gateway_ref=result.gateway_ref,
        )
        return result

    async def find_charge(self, request: ChargeRequest) -> ChargeResult | None:
        """The customer's PaymentIntents, newest first, bounded below by created_after (less a
        margin for clock skew), searched for the one whose metadata carries the key.

        The list API rather than the search API: search is eventually consistent ("Don't use
        search in read-after-write flows ... data is searchable in under 1 minute", longer
        during an outage), and a lookup right after a lost answer is exactly read-after-write.

        With no customer_id there is nothing to list, and nothing to miss: charge() sends the
        customer whenever there is one, and Stripe refuses a PaymentMethod attached to a customer
        unless that customer is named, so a request without one never charged a card on file.
        """
        if not request.customer_id:
            return None
        params: PaymentIntentListParams = {"customer": request.customer_id, "limit": _LIST_PAGE}
        floor = created_floor(request)
        if floor is not None:
            params["created"] = {"gte": floor}
        found: list[stripe.PaymentIntent] = []
        try:
            while True:
                page = await self._client.v1.payment_intents.list_async(
                    params=params, options=self._options(None)
                )
                found += [
                    intent
                    for intent in page.data
                    if _metadata_key(intent) == request.idempotency_key
                ]
                if not page.has_more or not page.data:
                    break
                params["starting_after"] = page.data[-1].id
        except stripe.StripeError as exc:
            raise gateway_error(exc) from exc
        if not found:
            log.info("gateway.charge_not_found", idempotency_key=request.idempotency_key)
            return None
        # After a pruned key was reused, several intents carry it: the one that took the money
        # is the answer (it must be credited), else the newest (the list is newest first).
        intent = next((i for i in found if i.status == "succeeded"), found[0])
        self._check_same_request(intent, request)
        result = classify_intent(intent)
        log.info(
            "gateway.charge_found",
            idempotency_key=request.idempotency_key,
            outcome="succeeded" if isinstance(result, ChargeSucceeded) else result.code,
            gateway_ref=intent.id,
            intents=len(found),
        )
        return result

    @staticmethod
    def _check_same_request(intent: stripe.PaymentIntent, request: ChargeRequest) -> None:
        # What Stripe's idempotency layer would say (idempotency_error) had the key still been
        # remembered: the key names another request, which is our bug, not a charge to credit.
        try:
            amount = to_gateway_amount(request.amount, request.currency)
        except MoneyError as exc:
            raise GatewayConfigError(f"invalid charge amount: {exc}") from exc
        if (intent.amount, intent.currency) != (amount, request.currency.lower()):
            raise GatewayConfigError(
                f"idempotency key {request.idempotency_key!r} belongs to {intent.id} for "
                f"{intent.amount} {intent.currency}, not {amount} {request.currency.lower()}"
            )

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]  # untyped in the SDK
