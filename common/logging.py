"""structlog setup: JSON lines by default, `noun.verb` events, secrets scrubbed on the way out."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(
    r"pass(word)?|secret|api_key|apikey|authorization|token|card_number|cvc|cvv|"
    r"\bnumber\b|stripe_api_key|credential",
    re.IGNORECASE,
)
# Stripe secret/restricted keys, anything shaped like a card number (13-19 digits, optionally
# grouped), the account API's bearer tokens (common/credentials/tokens.py: `cbt_…`, whole or
# cut short) and whatever follows `Bearer ` (a malformed token may be someone's real secret),
# wherever they appear in a string.
_SECRET_VALUES = re.compile(
    r"\b(?:sk|rk)_(?:test|live)_[A-Za-z0-9]+|\b(?:\d[ -]?){12,18}\d\b"
    r"|cbt_[0-9a-f]{4,}[A-Za-z0-9_-]*"
    r"|\b[Bb][Ee][Aa][Rr][Ee][Rr][ \t]+[^\s\"',;]+"
)
REDACTED = "[redacted]"


_ASCII_DIGITS = str.maketrans("", "", "0123456789")
_CARD_MIN_DIGITS = 13


def _may_hold_secret(text: str) -> bool:
    """False only when `_SECRET_VALUES` cannot match: every key and token shape has an `_`,
    `Bearer` has "earer", a card number has at least 13 digits. A log line holds a dozen
    strings and the full pattern costs microseconds each: most lines need none of it."""
    if not text.isascii():
        return True  # \d matches other scripts' digits too: let the pattern decide
    return (
        "_" in text
        or len(text) - len(text.translate(_ASCII_DIGITS)) >= _CARD_MIN_DIGITS
        or "earer" in text.lower()
    )


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    # A program logs with few distinct keys: remember the answer instead of searching again.
    return _SECRET_KEYS.search(key) is not None


def scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUES.sub(REDACTED, value) if _may_hold_secret(value) else value
    if isinstance(value, dict):
        return {k: REDACTED if _secret_key(str(k)) else scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def redact_secrets(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if _secret_key(key):
            event_dict[key] = REDACTED
        else:
            value = event_dict[key]
            if isinstance(value, str | dict | list | tuple):
                event_dict[key] = scrub(value)
    return event_dict


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.format_exc_info,
        redact_secrets,
        # After the scrubber: a timestamp has 20 digits, enough to be searched for a card
        # number on every line, and it is ours.
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        # filter_by_level first: a debug call on a hot path costs a level check, nothing more.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # Library logs (dramatiq, alembic, httpx) go through the same renderer and scrubber.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # alembic.runtime.plugins: seven INFO lines each time alembic is imported.
    for noisy in ("httpx", "httpcore", "stripe", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pika warns of every channel the broker closes, a passive declare of a queue not yet made
    # included; dramatiq reports the connection errors that matter itself.
    logging.getLogger("pika").setLevel(logging.ERROR)
