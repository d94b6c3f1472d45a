"""The API's documents, as OpenAPI shows them. Responses are rendered from the domain's dicts
(`to_jsonable`); these models describe them for clients and for schemathesis, which checks
every response against them.

Request bodies are not parsed by these models: POST /v1/usage hands the JSON to the balance
worker's own decoder (common/usage/decode.py). `USAGE_REQUEST_SCHEMA` describes what that
decoder accepts, as far as JSON Schema can say it (it cannot say "at most a day ahead").
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.usage.decode import (
    MAX_ACCOUNT_ID_CHARS,
    MAX_BATCH_EVENTS,
    MAX_EVENT_ID_CHARS,
    MAX_KIND_CHARS,
)

# format_amount's output: digits, a point, 2 to 6 decimals; negative for debits in the ledger.
AMOUNT_PATTERN: Final = r"^-?[0-9]+\.[0-9]{2,6}$"
Amount = Annotated[str, Field(pattern=AMOUNT_PATTERN, examples=["12.50"])]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoRecharge(Strict):
    enabled: bool
    balance_amount: Amount | None = Field(description="T: recharge when the balance falls below")
    recharge_amount: Amount | None = Field(description="R: the amount of one charge")
    mode: Literal["repeat", "single"]


class Account(Strict):
    """What `contacto-billing accounts show --json` shows, without the charges."""

    account_id: str
    currency: str = Field(pattern="^[A-Z]{3}$")
    balance: Amount
    status: Literal["active", "suspended"] = Field(
        description="suspended: the account may not spend (calls must not be connected)"
    )
    auto_recharge: AutoRecharge
    retry_tier: int = Field(ge=0, le=4, description="0 normal; 1-4 after failed attempts")
    armed_level: Amount | None = Field(
        description="the balance at which the next attempt fires (tiers 1-4), else null"
    )


class LedgerEntry(Strict):
    id: int = Field(ge=1)
    kind: Literal["usage", "recharge", "credit"]
    amount: Amount = Field(description="signed: a debit is negative")
    balance_after: Amount
    reference: str = Field(description="usage: the event id; recharge: the charge; credit: ref")
    memo: str | None
    created_at: datetime


class LedgerPage(Strict):
    account_id: str
    entries: list[LedgerEntry]
    next: int | None = Field(
        description="pass as `after` for the following page; null on the last page"
    )


class Charge(Strict):
    id: int = Field(ge=1)
    run_id: int = Field(ge=1)
    kind: Literal["auto", "manual"]
    seq: int = Field(ge=1, description="the charge's number within its run")
    amount: Amount
    currency: str = Field(pattern="^[A-Z]{3}$")
    status: Literal["pending", "succeeded", "failed", "error"]
    idempotency_key: str
    failure_code: str | None
    failure_message: str | None
    created_at: datetime
    updated_at: datetime


class ChargesPage(Strict):
    account_id: str
    charges: list[Charge]
    next: int | None = Field(
        description="pass as `after` for the following page; null on the last page"
    )


class Accepted(Strict):
    accepted: int = Field(ge=1, le=MAX_BATCH_EVENTS, description="events enqueued")
    message_id: str = Field(description="the dramatiq message that carries them")


class ErrorDetail(BaseModel):
    reason: str
    index: int | None = Field(None, description="the event's position in `events`")
    event_id: str | None = None
    location: str | None = Field(None, description="the parameter, e.g. query.limit")


class ErrorInfo(Strict):
    code: str = Field(examples=["unauthorized", "not_found", "invalid_usage"])
    message: str
    details: list[ErrorDetail] | None = None


class Error(Strict):
    error: ErrorInfo


class Health(Strict):
    status: Literal["ok"]


class Readiness(Strict):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Literal["ok", "unavailable"]] = Field(
        description="postgres, redis: ok or unavailable (why: in the log)"
    )


# As loose as the decoder, never stricter: anything this schema refuses, the decoder refuses
# too (so a 202 never answers what the document calls invalid). What it cannot say (blank
# text, NUL, zero, a time outside 2000 .. tomorrow) the decoder refuses with 422.
_TEXT: Final = {"type": "string", "minLength": 1, "description": "not blank, no NUL"}
USAGE_EVENT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "description": "One usage event, as on queue `usage` (README, The message contract).",
    "required": ["event_id", "account_id", "amount", "currency", "occurred_at"],
    "additionalProperties": False,
    "properties": {
        "event_id": {**_TEXT, "maxLength": MAX_EVENT_ID_CHARS},
        "account_id": {**_TEXT, "maxLength": MAX_ACCOUNT_ID_CHARS},
        "amount": {
            "type": "string",
            "description": "a decimal string > 0, at most 6 decimals (a JSON number is refused)",
            "pattern": r"^[0-9]+(\.[0-9]{1,6})?$",
            "examples": ["0.013"],
        },
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$", "description": "the account's"},
        "occurred_at": {
            "type": "string",
            "format": "date-time",
            "description": "with a time zone; from 2000 to at most a day ahead",
        },
        # null is what the decoder takes for "no kind", like a missing one.
        "kind": {
            "anyOf": [{**_TEXT, "maxLength": MAX_KIND_CHARS}, {"type": "null"}],
            "examples": ["voice"],
        },
    },
}
USAGE_REQUEST_SCHEMA: Final[dict[str, Any]] = {
    "oneOf": [
        {"$ref": "#/components/schemas/UsageEvent"},
        {"$ref": "#/components/schemas/UsageBatch"},
    ]
}
USAGE_BATCH_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["events"],
    "additionalProperties": False,
    "properties": {
        "events": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_BATCH_EVENTS,
            "items": {"$ref": "#/components/schemas/UsageEvent"},
        }
    },
}


ERROR_DESCRIPTIONS: Final = {
    "400": "malformed JSON",
    "401": "no token, a malformed one, or one that is unknown or revoked",
    "403": "the token lacks this operation's scope",
    "404": "no such account",
    "413": "the body is too large",
    "415": "not application/json",
    "422": "invalid parameters or usage events (each with its reason)",
    "503": "PostgreSQL or Redis is not answering; retry (Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route: these statuses, each with the Error document."""
    return {s: {"model": Error, "description": ERROR_DESCRIPTIONS[str(s)]} for s in statuses}
