"""Sending usage messages the way the upstream platform does (test jobs, demo, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import dramatiq

from common.names import ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH, QUEUE_USAGE


def usage_message(event: dict[str, Any]) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=QUEUE_USAGE, actor_name=ACTOR_RECORD_USAGE, args=(), kwargs=event, options={}
    )


def usage_batch_message(events: list[dict[str, Any]]) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=QUEUE_USAGE,
        actor_name=ACTOR_RECORD_USAGE_BATCH,
        args=(),
        kwargs={"events": events},
        options={},
    )


def chunked(events: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for event in events:
        chunk.append(event)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
