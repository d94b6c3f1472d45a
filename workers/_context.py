"""Per-message log context: every line an actor logs carries the message it is working for.

Bound inside the actor's coroutine: each message runs as its own asyncio task with its own
copy of the context, so bindings never leak from one message to another.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import structlog
from dramatiq.middleware import CurrentMessage

P = ParamSpec("P")
R = TypeVar("R")


def message_context(
    **static: Any,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Bind message_id, actor, retries and the given keyword arguments (e.g. run_id)."""

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            message = CurrentMessage.get_current_message()
            context: dict[str, Any] = {"actor": fn.__name__}
            if message is not None:
                context["message_id"] = message.message_id
                context["retries"] = message.options.get("retries", 0)
            for key in static.get("bind", ()):
                if key in kwargs:
                    context[key] = kwargs[key]
            with structlog.contextvars.bound_contextvars(**context):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate
