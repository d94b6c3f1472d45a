"""Reading a JSON request body: the media type, a size limit, and a parse that keeps JSON
numbers numbers.

The body is parsed by the standard library's `json`, as dramatiq parses a message for the
balance worker: an amount sent as a number (1.5, 3, 1e400, NaN) reaches the decoder as a
number and is refused with the worker's own reason, never turned into text on the way.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Final

from web.errors import ApiError

JSON_MEDIA_TYPE: Final = "application/json"


def check_media_type(content_type: str | None) -> None:
    """application/json (UTF-8, the only charset JSON has), else 415."""
    if content_type is None:
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    media_type, _, params = content_type.partition(";")
    if media_type.strip().lower() != JSON_MEDIA_TYPE:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send Content-Type: application/json, not {media_type.strip()[:100]!r}",
        )
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise ApiError(415, "unsupported_media_type", "JSON bodies are UTF-8")


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, or 413 as soon as it grows past `limit` (a chunked body has no
    Content-Length to check beforehand)."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise ApiError(
                413,
                "payload_too_large",
                f"the body is larger than {limit} bytes",
                headers={"Connection": "close"},
            )
    return bytes(body)


def parse_json(body: bytes) -> Any:
    """The JSON value of a UTF-8 body, or 400 saying what is wrong with it."""
    if not body.strip():
        raise ApiError(400, "malformed_json", "the body is empty; send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not UTF-8 ({exc.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "malformed_json", f"malformed JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        # Integers of more than 4,300 digits, nesting deeper than the interpreter allows.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ApiError(400, "malformed_json", f"malformed JSON: {reason}") from None
