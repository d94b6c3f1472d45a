"""Queue entries a worker cannot run: kept aside with their reason, never crashing the consumer.

dramatiq's Redis consumer decodes each fetched entry with `Message.decode`; an entry that is
not dramatiq JSON (a hostile or buggy producer writing to the queue) raises out of the
consumer, which logs "Consumer encountered an unexpected error" and restarts, and the entry
stays in the worker's ack set, where nobody ever looks again. An id pushed onto the list
without its data comes back as None and is dropped the same way. Messages naming an actor
this process does not have, or with arguments the actor cannot take, fail in the worker
thread instead (the latter retried with backoff, for nothing).

`SiftingConsumer` (the consumer of every broker the factory builds) sifts each entry:

* not a message (not JSON, not dramatiq's fields, an id without data): on the usage queue it
  is replaced in Redis, atomically, by a stand-in message for the `undecodable_message` actor
  carrying the raw bytes (base64, bounded) and the reason, which the balance worker keeps as
  rejected usage (`usage rejected`); on other queues the stand-in is dead-lettered with
  `options.dead_reason` (`dlq list`).
* a message this process cannot run (unknown actor, arguments that do not bind): dead-lettered
  as it is, with `options.dead_reason`, so that `dlq requeue` can run it once that is fixed.

The raw entry's Redis id is not in what dramatiq's `fetch` returns (only the data); on this,
the rare path, `SIFT_LUA` finds it in this worker's ack set (an id whose data is these bytes,
or that has none) and moves it in the same script, so acks, requeues and redelivery of the
stand-in go through dramatiq's own machinery under the stand-in's new id. Good messages cost
one dict lookup more than before.
"""

from __future__ import annotations

import base64
import inspect
import time
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from dramatiq import get_encoder
from dramatiq.broker import MessageProxy
from dramatiq.common import compute_backoff, q_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from redis import ConnectionError as RedisConnectionError

from common import names
from common.broker.grouped_acks import GroupedAckConsumer, GroupedAckRedisBroker

log = structlog.get_logger(__name__)

# Raw bytes kept per entry; a 1 MB hostile string is kept as its first 16 KiB and its size.
MAX_RAW_BYTES = 16 * 1024
MAX_REASON_CHARS = 300
_FIELDS: Mapping[str, type | tuple[type, ...]] = {
    "queue_name": str,
    "actor_name": str,
    "args": (list, tuple),
    "kwargs": dict,
    "options": dict,
    "message_id": str,
    "message_timestamp": int,
}

# KEYS: this worker's ack set for the queue, the queue's message hash, its dead-letter zset and
# hash. ARGV: match ("id", "data" or "orphan"), the id or data to match, action ("find": only
# say which; "replace": the new entry takes the old one's place in this worker's hands;
# "bury": it goes to the dead letters), the new id, the new data, the time in ms. Returns the
# raw id, or false.
SIFT_LUA = """
local acks, messages, xqueue, xmessages = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local match, wanted, action = ARGV[1], ARGV[2], ARGV[3]
local found = nil
if match == "id" then
    if redis.call("sismember", acks, wanted) == 1 then found = wanted end
else
    for _, id in ipairs(redis.call("smembers", acks)) do
        local value = redis.call("hget", messages, id)
        if (match == "orphan" and not value) or (match == "data" and value == wanted) then
            found = id
            break
        end
    end
end
if not found or action == "find" then return found or false end
redis.call("srem", acks, found)
redis.call("hdel", messages, found)
if action == "replace" then
    redis.call("hset", messages, ARGV[4], ARGV[5])
    redis.call("sadd", acks, ARGV[4])
else
    redis.call("zadd", xqueue, ARGV[6], ARGV[4])
    redis.call("hset", xmessages, ARGV[4], ARGV[5])
end
return found
"""


def _bounded(text: str, limit: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def decode_entry(data: bytes) -> tuple[Message[Any] | None, str | None]:
    """The message in a queue entry, or None and why it is not one."""
    try:
        fields = get_encoder().decode(data)
    except Exception as exc:  # dramatiq's DecodeError(text, data, cause), or a custom encoder's
        last = exc.args[-1] if exc.args else None
        cause = last if isinstance(last, Exception) else exc
        return None, _bounded(f"not JSON: {type(cause).__name__}: {cause}")
    if not isinstance(fields, dict):
        return None, f"not a JSON object: {type(fields).__name__}"
    missing = sorted(set(_FIELDS) - set(fields))
    if missing:
        return None, _bounded(f"missing fields: {', '.join(missing)}")
    unknown = sorted(str(k) for k in set(fields) - set(_FIELDS))
    if unknown:
        return None, _bounded(f"unknown fields: {', '.join(unknown)}")
    for name, kind in _FIELDS.items():
        value = fields[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return None, f"{name} is {type(value).__name__}"
    return Message(**fields), None


def unfit_reason(message: Message[Any], actors: Mapping[str, Any]) -> str | None:
    """Why this process cannot run `message`, or None."""
    actor = actors.get(message.actor_name)
    if actor is None:
        return _bounded(f"unknown actor {message.actor_name!r}")
    signature = _signature(actor.fn)
    if signature is not None:
        try:
            signature.bind(*message.args, **message.kwargs)
        except TypeError as exc:
            return _bounded(f"arguments do not fit {message.actor_name}: {exc}")
    return None


_signatures: dict[Any, inspect.Signature | None] = {}


def _signature(fn: Any) -> inspect.Signature | None:
    """The actor's signature, None when it takes anything (*args, **kwargs: nothing to check)."""
    if fn not in _signatures:
        signature = inspect.signature(fn)  # follows __wrapped__ to the coroutine function
        kinds = {p.kind for p in signature.parameters.values()}
        takes_all = {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} <= kinds
        _signatures[fn] = None if takes_all else signature
    return _signatures[fn]


def raw_fields(raw: bytes) -> dict[str, Any]:
    """The stand-in's account of the raw bytes: base64 of at most MAX_RAW_BYTES, and the size."""
    kept = raw[:MAX_RAW_BYTES]
    return {
        "raw_base64": base64.b64encode(kept).decode("ascii"),
        "raw_size": len(raw),
        "truncated": len(kept) < len(raw),
    }


def stand_in(queue_name: str, raw: bytes, reason: str) -> Message[Any]:
    """A message for the undecodable_message actor in place of an entry that is none."""
    return Message(
        queue_name=q_name(queue_name),
        actor_name=names.ACTOR_UNDECODABLE,
        args=(),
        kwargs={"queue": q_name(queue_name), "reason": reason, **raw_fields(raw)},
        options={},
    )


class SiftingConsumer(GroupedAckConsumer):
    """dramatiq's Redis consumer (with grouped acks) that sifts what it hands out (see above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sift = self.broker.client.register_script(SIFT_LUA)

    # dramatiq's _RedisConsumer.__next__, with the decoding sifted instead of raising.
    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    self.misses = 0
                    proxy = self._proxy(data)
                    if proxy is None:
                        continue
                    self.queued_message_ids.add(proxy.message_id)
                    return proxy
                messages = []
                if self.outstanding_message_count < self.prefetch:
                    self.message_cache = messages = self.broker.do_fetch(
                        self.queue_name, self.prefetch - self.outstanding_message_count
                    )
                if not messages:
                    self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                    time.sleep(backoff_ms / 1000)
                    return None
        except RedisConnectionError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def _requeue_cached(self) -> None:
        # Sifted like the rest: what cannot run is put aside now, a stand-in keeps its place in
        # the queue (an id without data, left in the ack set, would be dropped by dramatiq's
        # maintenance, which requeues only ids that have data).
        cached, self.message_cache = self.message_cache, []
        proxies = [proxy for data in cached if (proxy := self._proxy(data)) is not None]
        ids = [str(proxy.options["redis_message_id"]) for proxy in proxies]
        if ids:
            self.broker.do_requeue(self.queue_name, *ids)

    def _proxy(self, data: bytes | None) -> MessageProxy | None:
        """The message to hand out for a fetched entry; None when it was put aside."""
        if data is None:
            return self._put_aside_orphan()
        message, reason = decode_entry(data)
        if message is None:
            return self._put_aside(("data", data), data, reason or "undecodable")
        redis_id = message.options.get("redis_message_id")
        # A broker without actors is a tool reading the queue (a test, an inspection), not a
        # worker: it runs nothing, so nothing is unfit for it.
        actors = self.broker.actors
        unfit = unfit_reason(message, actors) if actors else None
        if unfit is None and isinstance(redis_id, str):
            return MessageProxy(message)  # every good message: one dict lookup more
        new_id = str(uuid.uuid4())
        match = ("id", redis_id.encode()) if isinstance(redis_id, str) else ("data", data)
        if unfit is None:
            # Written by hand without dramatiq's Redis id, which its ack needs: given one.
            fixed = message.copy(options={**message.options, "redis_message_id": new_id})
            return MessageProxy(fixed) if self._move(match, "replace", new_id, fixed) else None
        options = {**message.options, "redis_message_id": new_id, "dead_reason": unfit}
        if self._move(match, "bury", new_id, message.copy(options=options)):
            log.warning(
                "broker.message_dead_lettered",
                queue=self.queue_name,
                actor=message.actor_name,
                message_id=message.message_id,
                reason=unfit,
            )
        return None

    def _put_aside_orphan(self) -> MessageProxy | None:
        # An id pushed without its data: the id is all there is to keep.
        raw_id = self._move(("orphan", b""), "find", "", None)
        if raw_id is None:
            return None
        reason = "a queue entry without message data (the raw bytes are its id)"
        return self._put_aside(("id", raw_id), raw_id, reason)

    def _put_aside(self, match: tuple[str, bytes], raw: bytes, reason: str) -> MessageProxy | None:
        message = stand_in(self.queue_name, raw, reason)
        new_id = str(uuid.uuid4())
        usage = q_name(self.queue_name) == names.QUEUE_USAGE
        if usage and names.ACTOR_UNDECODABLE in self.broker.actors:
            message = message.copy(options={"redis_message_id": new_id})
            kept_as, action = "rejected usage", "replace"
        else:
            message = message.copy(options={"redis_message_id": new_id, "dead_reason": reason})
            kept_as, action = "dead letter", "bury"
        if not self._move(match, action, new_id, message):
            return None
        log.warning(
            "broker.entry_undecodable",
            queue=self.queue_name,
            reason=reason,
            raw_size=len(raw),
            kept_as=kept_as,
            message_id=message.message_id,
        )
        return MessageProxy(message) if action == "replace" else None

    def _move(
        self, match: tuple[str, bytes], action: str, new_id: str, new: Message[Any] | None
    ) -> bytes | None:
        """Run SIFT_LUA on this worker's entries of the queue; the raw id it found, or None."""
        namespace, queue = self.broker.namespace, self.queue_name
        keys = [
            names.acks_key(namespace, self.broker.broker_id, queue),
            names.queue_msgs_key(namespace, queue),
            names.dead_letter_key(namespace, q_name(queue)),
            names.dead_letter_msgs_key(namespace, q_name(queue)),
        ]
        kind, wanted = match
        data = new.encode() if new is not None else b""
        now_ms = int(time.time() * 1000)
        found = self._sift(keys=keys, args=[kind, wanted, action, new_id, data, now_ms])
        if found is None:
            # Acked, requeued or moved by someone else meanwhile: nothing left to keep here.
            log.warning("broker.entry_not_found", queue=queue, match=kind)
            return None
        return bytes(found)


class SiftingRedisBroker(GroupedAckRedisBroker):
    """The workers' broker: grouped acks, and consumers that sift (see the module docstring)."""

    @property
    def consumer_class(self) -> type[SiftingConsumer]:
        return SiftingConsumer
