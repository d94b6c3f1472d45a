"""RabbitMQ, dramatiq's other first-class broker (`BROKER_URL=amqp://…`): the step past one
Redis. The same actors, queues and middleware; what differs is here.

* **Quorum queues** (Raft-replicated across a cluster's nodes): the work queue, its delay
  queue (`.DQ`) and its dead-letter queue (`.XQ`) are declared `x-queue-type: quorum`, so a
  node lost does not lose a queue. A queue already declared classic keeps its type: RabbitMQ
  refuses to redeclare it, and the worker says so at start.
* **Publisher confirms**: `enqueue` returns once RabbitMQ has the message (written to a quorum
  of nodes); a message it could not route raises instead of vanishing. The relay marks an
  outbox row sent only after that.
* **Redelivery** needs no heartbeat or maintenance: RabbitMQ returns a dead consumer's
  unacknowledged messages the moment its connection drops.
* **Undecodable bytes** on a queue (not JSON, or JSON that is no dramatiq message) are sifted
  by `SiftingRabbitmqConsumer` with common/broker/poison.py's reasons: one log line, then a
  nack, and RabbitMQ dead-letters them, raw, into the `.XQ` queue, where `dlq list` shows them
  with that reason (recomputed from the bytes). On Redis the usage queue's become rejected
  usage instead; here the raw bytes never reach an actor. A message naming an actor the
  worker does not have, or arguments that do not bind, is dead-lettered at once with
  `options.dead_reason`, as on Redis (not retried, no traceback).
* Namespaces are vhosts: `CONTACTO_BROKER_NAMESPACE` names Redis keys only; two deployments
  on one RabbitMQ use two vhosts (the URL's path).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pika
import structlog
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.common import dq_name, q_name, xq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

from common.broker.poison import decode_entry, unfit_reason

log = structlog.get_logger(__name__)

QUORUM: dict[str, str] = {"x-queue-type": "quorum"}


class SiftingRabbitmqConsumer(_RabbitmqConsumer):
    """dramatiq's RabbitMQ consumer, sifting as common/broker/poison.py does on Redis: an
    undecodable body is one warning with its reason (dramatiq logs a traceback per body, which
    a hostile producer can turn into a flood), decoded once by poison.decode_entry, which also
    checks the fields dramatiq's decode lets through; a message naming an unknown actor or
    arguments that do not bind is dead-lettered at once with its reason (`_bury`)."""

    def __next__(self) -> MessageProxy | None:
        # dramatiq's __next__, but for the decoding.
        try:
            method, _properties, body = next(self.iterator)
            if method is None:
                return None
        except (
            AssertionError,
            pika.exceptions.AMQPConnectionError,
            pika.exceptions.AMQPChannelError,
        ) as exc:
            if getattr(exc, "reply_code", None) == 404:  # redeclared when the consumer restarts
                self.broker.queues_pending.add(q_name(self.queue_name))
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        message, reason = decode_entry(body)
        if message is None:
            log.warning("broker.undecodable", queue=self.queue_name, reason=reason, size=len(body))
            # Not requeued: the queue's dead-letter routing keeps the bytes as they came.
            self._nack(method.delivery_tag)  # type: ignore[no-untyped-call]
            return None
        # A broker without actors is a tool reading the queue, not a worker: nothing is unfit.
        actors = self.broker.actors
        unfit = unfit_reason(message, actors) if actors else None
        if unfit is not None:
            self._bury(method.delivery_tag, message, unfit)
            return None
        proxy = _RabbitmqMessage(method.redelivered, method.delivery_tag, message)  # type: ignore[no-untyped-call]
        self.known_tags.add(method.delivery_tag)
        return proxy

    def _bury(self, tag: int, message: Message[Any], reason: str) -> None:
        """Dead-letter a message this process cannot run at once, with `options.dead_reason`
        (as on Redis), instead of dramatiq's traceback per delivery and, for arguments that do
        not bind, a retry with backoff for nothing.

        A nack cannot add the reason: the copy that carries it is published to the `.XQ` queue
        on the broker's confirmed channel first, and the delivery acked after. A crash in
        between leaves one dead letter twice, never none."""
        dead = message.copy(options={**message.options, "dead_reason": reason})
        try:
            self.broker.channel.basic_publish(
                exchange="",
                routing_key=xq_name(self.queue_name),
                body=dead.encode(),
                properties=pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
        except Exception:
            # Kept all the same, without the reason: the queue's dead-letter routing.
            log.exception("broker.dead_letter_publish_failed", queue=self.queue_name)
            self._nack(tag)  # type: ignore[no-untyped-call]
            return
        self.connection.add_callback_threadsafe(partial(self.channel.basic_ack, tag))
        log.warning(
            "broker.message_dead_lettered",
            queue=self.queue_name,
            actor=message.actor_name,
            message_id=message.message_id,
            reason=reason,
        )


class QuorumRabbitmqBroker(RabbitmqBroker):
    """dramatiq's RabbitMQ broker declaring quorum queues, with publisher confirms on, and a
    consumer that sifts what it hands out."""

    @property
    def consumer_class(self) -> type[SiftingRabbitmqConsumer]:
        return SiftingRabbitmqConsumer

    def __init__(self, *, url: str, dead_message_ttl_ms: int, **kwargs: Any) -> None:
        super().__init__(url=url, confirm_delivery=True, **kwargs)
        self.dead_message_ttl_ms = dead_message_ttl_ms

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        inherited: dict[str, Any] = super()._build_queue_arguments(queue_name)  # type: ignore[no-untyped-call]
        return {**inherited, **QUORUM}

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self.channel.queue_declare(
            queue=xq_name(queue_name),
            durable=True,
            # Static: RabbitMQ expires messages head first, in order of arrival.
            arguments={"x-message-ttl": self.dead_message_ttl_ms, **QUORUM},
        )


@dataclass(frozen=True)
class RabbitQueueStats:
    queue: str
    ready: int
    delayed: int
    dead: int
    consumers: int


@dataclass(frozen=True)
class RabbitDeadLetter:
    queue: str
    message: dict[str, Any] | None  # None: the bytes are not a dramatiq message
    raw: bytes

    @property
    def reason(self) -> str | None:
        """Why it died: dramatiq's dead_reason, or why the bytes are no message."""
        if self.message is None:
            return decode_entry(self.raw)[1]
        found = self.options.get("dead_reason")
        return None if found is None else str(found)

    @property
    def message_id(self) -> str | None:
        found = (self.message or {}).get("message_id")
        return None if found is None else str(found)

    @property
    def actor(self) -> str | None:
        found = (self.message or {}).get("actor_name")
        return None if found is None else str(found)

    @property
    def options(self) -> dict[str, Any]:
        found = (self.message or {}).get("options")
        return found if isinstance(found, dict) else {}


@contextlib.contextmanager
def _channel(url: str) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        yield connection.channel()
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def _count(url: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of `queue`; (0, 0) if it was never declared."""
    try:
        with _channel(url) as channel:
            ok = channel.queue_declare(queue=queue, passive=True)
            return int(ok.method.message_count), int(ok.method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0, 0
        raise


def queue_stats(url: str, queues: Sequence[str]) -> list[RabbitQueueStats]:
    """What AMQP itself tells about each queue (no management plugin needed): messages ready,
    held for a delay (`.DQ`: dramatiq's workers hold delayed messages unacked until due, so
    those count as consumed here), dead (`.XQ`), and consumers."""
    stats = []
    for queue in queues:
        ready, consumers = _count(url, queue)
        delayed, _ = _count(url, dq_name(queue))
        dead, _ = _count(url, xq_name(queue))
        stats.append(RabbitQueueStats(queue, ready, delayed, dead, consumers))
    return stats


def dead_letters(url: str, queues: Sequence[str], limit: int) -> list[RabbitDeadLetter]:
    """Up to `limit` dead letters per queue, read without removing them: each is fetched
    unacknowledged and goes back to its queue when the channel closes."""
    found: list[RabbitDeadLetter] = []
    for queue in queues:
        try:
            with _channel(url) as channel:
                for _ in range(limit):
                    method, _props, body = channel.basic_get(xq_name(queue), auto_ack=False)
                    if method is None:
                        break
                    found.append(RabbitDeadLetter(queue, _decode(body), bytes(body)))
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
    return found


def _decode(body: bytes) -> dict[str, Any] | None:
    """The message's fields, or None if the bytes are no dramatiq message (poison's test)."""
    if decode_entry(body)[0] is None:
        return None
    found: dict[str, Any] = json.loads(body)
    return found


def requeue_dead(
    url: str, queues: Sequence[str], message_id: str | None
) -> tuple[list[RabbitDeadLetter], list[RabbitDeadLetter]]:
    """Move dead letters (one by dramatiq message id, or every one) back to their queue with a
    fresh retry budget. Returns (moved, skipped): undecodable bytes stay where they are.

    Each is published with a confirm before the dead copy is acknowledged: a crash in between
    leaves a duplicate, which the actors absorb (they dedupe), never a loss."""
    moved: list[RabbitDeadLetter] = []
    skipped: list[RabbitDeadLetter] = []
    for queue in queues:
        try:
            with _channel(url) as channel:
                channel.confirm_delivery()
                while True:
                    method, _props, body = channel.basic_get(xq_name(queue), auto_ack=False)
                    if method is None:
                        break
                    letter = RabbitDeadLetter(queue, _decode(body), bytes(body))
                    wanted = message_id is None or letter.message_id == message_id
                    if not wanted or letter.message is None:
                        if wanted:
                            skipped.append(letter)
                        continue  # left unacknowledged: back in the queue when the channel closes
                    fresh = dict(letter.message)
                    fresh["options"] = {
                        k: v
                        for k, v in dict(fresh.get("options") or {}).items()
                        if k not in ("retries", "traceback", "dead_reason")
                    }
                    channel.basic_publish(
                        exchange="",
                        routing_key=queue,
                        body=json.dumps(fresh, separators=(",", ":")).encode(),
                        properties=pika.BasicProperties(delivery_mode=2),
                        mandatory=True,
                    )
                    channel.basic_ack(method.delivery_tag)
                    moved.append(letter)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
    return moved, skipped


def purge_dead(url: str, queues: Sequence[str]) -> dict[str, int]:
    purged: dict[str, int] = {}
    for queue in queues:
        try:
            with _channel(url) as channel:
                purged[queue] = int(channel.queue_purge(xq_name(queue)).method.message_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            purged[queue] = 0
    return purged
