"""POST /v1/usage: usage events from a platform that does not speak dramatiq.

The body is one event or `{"events": [...]}` (1 to 1,000), exactly the keyword arguments of
`record_usage` / `record_usage_batch` (README, The message contract). It is decoded by the
balance worker's own decoder; if any event is refused, the request is refused whole (422, each
event's reason) and nothing is enqueued. Otherwise the same message the upstream would publish
goes on queue `usage` (common/broker/publish.py), and the answer is 202: the balance worker
debits it, exactly once per `event_id` (a retried request is harmless).

What only the database knows (an unknown account, a currency other than the account's, an
event id reused with another amount) is found by the balance worker, which keeps such an
event in `rejected_usage` with its reason, as for any publisher.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Final

import dramatiq
import redis
import structlog
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from common.broker.publish import usage_batch_message, usage_message
from common.credentials.tokens import SCOPE_USAGE_WRITE
from common.names import ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH
from common.usage.decode import Rejection, Submission, decode_batch, decode_single
from web.api.models import USAGE_REQUEST_SCHEMA, Accepted, error_responses
from web.auth import BearerToken
from web.body import check_media_type, parse_json, read_limited
from web.errors import ApiError, unavailable
from web.resources import resources
from web.responses import JSONBytes

log = structlog.get_logger("web.usage")

# Every route here needs a token with usage:write.
router = APIRouter(
    prefix="/v1", tags=["usage"], dependencies=[Depends(BearerToken(SCOPE_USAGE_WRITE))]
)
_INDEX: Final = re.compile(r"events\[(\d+)\]: ")
NOT_AN_EVENT: Final = 'the body must be one usage event (an object) or {"events": [...]}'


def decode_request(body: Any) -> tuple[Submission, dramatiq.Message[Any]]:
    """The decoder's verdict on a request body, and the message that would carry it."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_usage", f"{NOT_AN_EVENT}, got a JSON {_json_type(body)}")
    if "events" in body:
        sub = decode_batch((), body, message_id=None, actor_name=ACTOR_RECORD_USAGE_BATCH)
        events = body["events"]
        message = usage_batch_message(events if isinstance(events, list) else [])
    else:
        sub = decode_single((), body, message_id=None, actor_name=ACTOR_RECORD_USAGE)
        message = usage_message(body)
    return sub, message


def refusal(sub: Submission) -> ApiError:
    """422 naming each refused event and why, in the decoder's words."""
    details = [_detail(r) for r in sub.rejections]
    total = sub.size
    if total > 1:
        message = f"{len(details)} of {total} events refused; nothing was enqueued"
    else:
        message = f"{sub.rejections[0].reason}; nothing was enqueued"
    return ApiError(422, "invalid_usage", message, details=details)


def _detail(rejection: Rejection) -> dict[str, Any]:
    detail: dict[str, Any] = {"reason": rejection.reason}
    if match := _INDEX.match(rejection.reason):
        detail["index"] = int(match.group(1))
    if rejection.event_id is not None:
        detail["event_id"] = rejection.event_id
    return detail


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


@router.post(
    "/usage",
    summary="Record usage: one event or a batch of up to 1,000, debited once per event_id",
    status_code=202,
    response_class=JSONBytes,
    responses={202: {"model": Accepted}, **error_responses(400, 413, 415, 422)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": USAGE_REQUEST_SCHEMA}},
        }
    },
)
async def post_usage(request: Request) -> Response:
    check_media_type(request.headers.get("content-type"))
    res = resources(request)
    body = parse_json(await read_limited(request.stream(), res.web.max_body_bytes))
    sub, message = decode_request(body)
    if sub.rejections:
        log.info("usage.refused", events=sub.size, refused=len(sub.rejections))
        raise refusal(sub)
    try:
        await asyncio.to_thread(res.broker.enqueue, message)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("usage.enqueue_failed", error=str(exc)[:200])
        raise unavailable("Redis") from None
    log.info("usage.enqueued", message_id=message.message_id, events=len(sub.items))
    return JSONBytes(
        {"accepted": len(sub.items), "message_id": message.message_id}, status_code=202
    )
