"""Group acknowledgements: one Redis call for every message acked while the last call ran.

Stock dramatiq acks each message with its own EVALSHA, from the worker thread that ran it: for
a cheap actor that round trip is a third of the worker's CPU. Here the first thread to ack
becomes the flusher: it sends its ack, and then, in one call each, whatever other threads
buffered meanwhile. The other threads return at once and take their next message.

Safety is unchanged. A message is still acked only after its actor returned (for the balance
worker: after its transaction committed); an ack merely reaches Redis a call later. If the
process dies with acks still buffered, those messages are redelivered like any unacked
message, and the consumer's dedupe (the event id) makes the second delivery a no-op.

The script does what dramatiq's own `ack` command does (dramatiq/brokers/redis/dispatch.lua,
the key schema written at its top): refresh this worker's heartbeat, and for each id, if it
was in this worker's ack set, drop it from there and from the queue's message hash.
`tests/integration/test_grouped_acks.py` checks it against a real broker, so a change of
dramatiq's key layout shows up as a failing test, not as redelivered messages.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

ACK_MANY_LUA = """
local namespace = KEYS[1]
local timestamp = ARGV[1]
local queue_name = ARGV[2]
local worker_id = ARGV[3]
redis.call("zadd", namespace .. ":__heartbeats__", timestamp, worker_id)
local acks = namespace .. ":__acks__." .. worker_id .. "." .. queue_name
local messages = namespace .. ":" .. queue_name .. ".msgs"
local acked = 0
for i = 4, #ARGV do
    if redis.call("srem", acks, ARGV[i]) > 0 then
        redis.call("hdel", messages, ARGV[i])
        acked = acked + 1
    end
end
return acked
"""

# Lua unpacks ARGV onto its stack; stay far below its limit (~8,000) however many threads ack.
MAX_ACKS_PER_CALL = 1000


class GroupedAckConsumer(_RedisConsumer):
    def __init__(self, broker: GroupedAckRedisBroker, *args: Any, **kwargs: Any) -> None:
        super().__init__(broker, *args, **kwargs)  # type: ignore[no-untyped-call]
        self._ack_lock = threading.Lock()
        self._buffered: list[str] = []
        self._flushing = False

    def ack(self, message: Any) -> None:
        try:
            with self._ack_lock:
                self._buffered.append(message.options["redis_message_id"])
                if self._flushing:
                    return  # the flushing thread sends it with its next call
                self._flushing = True
            self._flush()
        finally:
            self.queued_message_ids.discard(message.message_id)

    def _flush(self) -> None:
        """Send buffered acks until none is left. Only one thread runs this at a time."""
        batch: list[str] = []
        try:
            while True:
                with self._ack_lock:
                    batch = self._buffered[:MAX_ACKS_PER_CALL]
                    del self._buffered[:MAX_ACKS_PER_CALL]
                    if not batch:
                        self._flushing = False
                        return
                self.broker.ack_many(self.queue_name, batch)
                batch = []
        except BaseException as exc:
            with self._ack_lock:
                # Unsent acks go back: the next ack (dramatiq retries this one on
                # ConnectionClosed) or close() sends them.
                self._buffered[:0] = batch
                self._flushing = False
            if isinstance(exc, redis.ConnectionError):
                raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
            raise

    def close(self) -> None:
        # Worker threads have stopped by now; what they acked goes out before the consumer goes.
        try:
            with self._ack_lock:
                busy = self._flushing  # then that thread sends the rest
                self._flushing = True
            if not busy:
                self._flush()
        except Exception:  # those messages are redelivered later, and deduped
            self.logger.warning("Could not send %d buffered acks.", len(self._buffered))
        try:
            self._requeue_cached()
        except Exception:  # left in the ack set: redelivered after the heartbeat timeout
            self.logger.warning("Could not requeue prefetched messages.")
        finally:
            super().close()

    def _requeue_cached(self) -> None:
        """Put back what was fetched but never handed to a worker.

        dramatiq's consumer thread stops between two messages of a prefetched batch and its
        Redis consumer drops the rest of the batch on close, leaving those ids in this
        worker's ack set: they would wait for the heartbeat timeout and a maintenance pass
        (minutes) before anyone got them. Requeued now, the next worker takes them at once.
        """
        cached, self.message_cache = self.message_cache, []
        ids = [rid for data in cached if (rid := self.cached_redis_id(data)) is not None]
        if ids:
            self.broker.do_requeue(self.queue_name, *ids)

    def cached_redis_id(self, data: bytes | None) -> str | None:
        """The Redis id of a fetched entry, None when it cannot be told (left for redelivery)."""
        if data is None:
            return None
        try:
            return str(Message.decode(data).options["redis_message_id"])
        except Exception:
            return None


class GroupedAckRedisBroker(RedisBroker):
    """RedisBroker whose consumers group their acks (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._ack_many = self.client.register_script(ACK_MANY_LUA)

    @property
    def consumer_class(self) -> type[GroupedAckConsumer]:
        return GroupedAckConsumer

    def ack_many(self, queue_name: str, redis_message_ids: list[str]) -> int:
        acked: int = self._ack_many(
            keys=[self.namespace],
            args=[int(time.time() * 1000), queue_name, self.broker_id, *redis_message_ids],
        )
        return acked
