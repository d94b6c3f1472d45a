"""Read and act on dramatiq's Redis keys: queue depths, live workers, dead letters.

The `queues` and `dlq` commands and the metrics collector share these functions. Every key name
comes from common.names; the layout is dramatiq's own (dramatiq/brokers/redis/dispatch.lua).
Values may come back as bytes or str depending on the client's decode_responses, so both are
accepted everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from dramatiq import get_encoder

from common import names

Raw = bytes | str

_DQ = names.delay_queue("")

# One snapshot per queue, atomic so that the head id and its data cannot be fetched and acked
# by a worker between two round trips. Returns {ready, delayed, dead, head data|nil, scard...}.
_STATS_LUA = """
local head = redis.call("lindex", KEYS[1], 0)
local data = false
if head then data = redis.call("hget", KEYS[2], head) end
local out = {redis.call("llen", KEYS[1]), redis.call("hlen", KEYS[3]),
             redis.call("zcard", KEYS[4]), data}
for i = 5, #KEYS do out[#out + 1] = redis.call("scard", KEYS[i]) end
return out
"""

# The inverse of dispatch.lua's "nack", ending as its "enqueue" does (hset .msgs, rpush list).
# It moves the message only if the dead copy is still exactly what the caller read, so two
# operators requeueing at once cannot enqueue it twice.
_REQUEUE_LUA = """
if redis.call("hget", KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call("zrem", KEYS[1], ARGV[1])
redis.call("hdel", KEYS[2], ARGV[1])
redis.call("hset", KEYS[4], ARGV[1], ARGV[3])
redis.call("rpush", KEYS[3], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class QueueStats:
    queue: str
    ready: int
    delayed: int
    in_flight: int
    dead: int
    oldest_ready_age_s: float | None
    # Part of in_flight held by workers whose heartbeat expired: dramatiq's maintenance puts
    # these back on the ready list, but until then nothing will process them.
    orphaned: int = 0
    # Since the oldest dead letter died: dramatiq deletes it after dead_message_ttl.
    oldest_dead_age_s: float | None = None


@dataclass(frozen=True)
class WorkerBeat:
    id: str
    last_heartbeat_age_s: float


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    redis_id: str
    died_at_ms: int
    message: dict[str, Any] | None
    raw: Raw | None = field(repr=False)

    @property
    def message_id(self) -> str:
        return str((self.message or {}).get("message_id", self.redis_id))

    @property
    def actor(self) -> str | None:
        actor = (self.message or {}).get("actor_name")
        return None if actor is None else str(actor)

    @property
    def options(self) -> dict[str, Any]:
        options = (self.message or {}).get("options")
        return options if isinstance(options, dict) else {}

    @property
    def dead_reason(self) -> str | None:
        # Set when the worker put the message aside without running it (unknown actor,
        # arguments that do not fit, an entry that was no message: common/broker/poison.py).
        reason = self.options.get("dead_reason")
        return str(reason) if reason else None

    @property
    def traceback(self) -> str | None:
        # Retries stores the traceback of a failure in the copy it re-enqueues; the attempt that
        # finally dies is nacked with the copy already in Redis, so this is the previous failure.
        tb = self.options.get("traceback")
        return str(tb) if tb else None


def _text(value: Raw) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _now_ms() -> int:
    return int(time.time() * 1000)


def _canonical(queue: str) -> str:
    return queue[: -len(_DQ)] if queue.endswith(_DQ) else queue


def _queue_suffixes(namespace: str) -> list[str]:
    # names.py's builders applied to an empty queue name, longest first so that ".XQ.msgs" wins
    # over ".msgs". A ".DQ" list always has its ".DQ.msgs" hash, which _canonical folds.
    prefix = len(names.queue_key(namespace, ""))
    builders = (names.dead_letter_msgs_key, names.queue_msgs_key, names.dead_letter_key)
    return [build(namespace, "")[prefix:] for build in builders]


@dataclass
class _Layout:
    queues: set[str]
    # canonical queue -> [(ack set key, worker id)], delay-queue ack sets excluded: a delayed
    # message a worker holds until its eta is still delayed (it stays in .DQ.msgs), not running.
    acks: dict[str, list[tuple[str, str]]]


def _scan(client: redis.Redis, namespace: str) -> _Layout:
    layout = _Layout(set(), {})
    ns_prefix = names.queue_key(namespace, "")
    acks_prefix = names.acks_prefix(namespace)
    suffixes = _queue_suffixes(namespace)
    for raw_key in client.scan_iter(match=names.namespace_pattern(namespace), count=1000):
        key = _text(raw_key)
        if key.startswith(acks_prefix):
            # Worker ids are uuid4 strings, so the first dot ends the worker id.
            worker, _, queue = key[len(acks_prefix) :].partition(".")
            if queue:
                layout.queues.add(_canonical(queue))
                if not queue.endswith(_DQ):
                    layout.acks.setdefault(queue, []).append((key, worker))
            continue
        rest = key[len(ns_prefix) :]
        for suffix in suffixes:
            if rest.endswith(suffix) and len(rest) > len(suffix):
                layout.queues.add(_canonical(rest[: -len(suffix)]))
                break
    return layout


def live_workers(
    client: redis.Redis, namespace: str, heartbeat_timeout_ms: int, *, now_ms: int | None = None
) -> list[WorkerBeat]:
    """Brokers that beat within the timeout, the rule dramatiq's maintenance uses.

    Every RedisBroker beats on each command, so a process that only enqueues shows up too.
    """
    now = _now_ms() if now_ms is None else now_ms
    key, oldest = names.heartbeats_key(namespace), now - heartbeat_timeout_ms
    rows = cast(
        "list[tuple[Raw, float]]", client.zrangebyscore(key, f"({oldest}", "+inf", withscores=True)
    )
    beats = [
        WorkerBeat(_text(wid), max(0.0, (now - float(score)) / 1000))  # float-ok: milliseconds
        for wid, score in rows
    ]
    return sorted(beats, key=lambda w: w.id)


def _decode(raw: Raw | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        data = get_encoder().decode(raw if isinstance(raw, bytes) else raw.encode())
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def _message_age_s(data: Raw | None, now_ms: int) -> float | None:
    stamp = (_decode(data) or {}).get("message_timestamp")
    # An id without decodable data has no age; dramatiq itself skips such an entry.
    return max(0.0, (now_ms - stamp) / 1000) if isinstance(stamp, int) else None


def queue_stats(
    client: redis.Redis, namespace: str, heartbeat_timeout_ms: int, *, now_ms: int | None = None
) -> list[QueueStats]:
    """Depths of names.QUEUES (always listed, in that order) and of any other queue found."""
    now = _now_ms() if now_ms is None else now_ms
    layout = _scan(client, namespace)
    live = {w.id for w in live_workers(client, namespace, heartbeat_timeout_ms, now_ms=now)}
    order = list(names.QUEUES) + sorted(layout.queues - set(names.QUEUES))
    script = client.register_script(_STATS_LUA)
    pipe = client.pipeline(transaction=False)
    for queue in order:
        keys = [
            names.queue_key(namespace, queue),
            names.queue_msgs_key(namespace, queue),
            # Delayed = .DQ.msgs, not the .DQ list: workers prefetch delayed messages into
            # memory until their eta, and those stay in the hash but leave the list.
            names.queue_msgs_key(namespace, names.delay_queue(queue)),
            names.dead_letter_key(namespace, queue),
            *(key for key, _ in layout.acks.get(queue, [])),
        ]
        script(keys=keys, client=pipe)
    replies = pipe.execute()
    for queue in order:  # the oldest death of each dead-letter set (scored by time of death)
        pipe.zrange(names.dead_letter_key(namespace, queue), 0, 0, withscores=True)
    oldest_deaths = pipe.execute()
    stats = []
    for queue, reply, oldest in zip(order, replies, oldest_deaths, strict=True):
        ready, delayed, dead, head, *held = reply
        owners = [worker for _, worker in layout.acks.get(queue, [])]
        stats.append(
            QueueStats(
                queue=queue,
                ready=int(ready),
                delayed=int(delayed),
                in_flight=sum(int(n) for n in held),
                dead=int(dead),
                # The head is what LPOP delivers next (enqueue RPUSHes), i.e. the longest
                # waiting; message_timestamp is its first enqueue, so retries add to its age.
                oldest_ready_age_s=_message_age_s(head, now) if int(ready) else None,
                orphaned=sum(int(n) for n, w in zip(held, owners, strict=True) if w not in live),
                oldest_dead_age_s=max(0.0, (now - oldest[0][1]) / 1000) if oldest else None,
            )
        )
    return stats


def dead_letter_queues(client: redis.Redis, namespace: str) -> list[str]:
    pattern = names.dead_letter_key(names.glob_escape(namespace), "*")
    # The key around the queue name, to cut the name back out of each key found.
    prefix, suffix = names.dead_letter_key(namespace, "\0").split("\0")
    found = {_text(k)[len(prefix) : -len(suffix)] for k in client.scan_iter(match=pattern)}
    return sorted(found)


def _read(client: redis.Redis, namespace: str, queue: str, rows: list[Any]) -> list[DeadLetter]:
    if not rows:
        return []
    ids = [_text(rid) for rid, _ in rows]
    raws = client.hmget(names.dead_letter_msgs_key(namespace, queue), ids)
    return [
        DeadLetter(queue, rid, int(score), _decode(raw), raw)
        for rid, (_, score), raw in zip(ids, rows, raws, strict=True)
    ]


def _queues(client: redis.Redis, namespace: str, queue: str | None) -> list[str]:
    return [queue] if queue is not None else dead_letter_queues(client, namespace)


def dead_letters(
    client: redis.Redis, namespace: str, queue: str | None = None, *, limit: int | None = None
) -> list[DeadLetter]:
    """Dead-lettered messages, oldest death first, of one queue or of every queue."""
    found: list[DeadLetter] = []
    for q in _queues(client, namespace, queue):
        end = -1 if limit is None else limit - 1
        rows = client.zrange(names.dead_letter_key(namespace, q), 0, end, withscores=True)
        found.extend(_read(client, namespace, q, rows))
    found.sort(key=lambda d: (d.died_at_ms, d.queue))
    return found if limit is None else found[:limit]


def dead_count(client: redis.Redis, namespace: str, queue: str | None = None) -> int:
    qs = _queues(client, namespace, queue)
    return sum(int(client.zcard(names.dead_letter_key(namespace, q))) for q in qs)


def find_dead(
    client: redis.Redis, namespace: str, message_id: str, queue: str | None = None
) -> list[DeadLetter]:
    """Dead letters whose dramatiq message_id or Redis id (the .XQ member) is `message_id`."""
    found: list[DeadLetter] = []
    for q in _queues(client, namespace, queue):
        zkey = names.dead_letter_key(namespace, q)
        score = client.zscore(zkey, message_id)
        if score is not None:
            found.extend(_read(client, namespace, q, [(message_id, score)]))
            continue
        # dramatiq logs message_id, while each retry re-enqueues under a new Redis id.
        hkey = names.dead_letter_msgs_key(namespace, q)
        for rid, raw in client.hscan_iter(hkey, count=500):
            if (_decode(raw) or {}).get("message_id") == message_id:
                died = client.zscore(zkey, rid)
                if died is not None:
                    found.extend(_read(client, namespace, q, [(rid, died)]))
    return found


def requeue_dead(
    client: redis.Redis, namespace: str, letters: Iterable[DeadLetter]
) -> list[DeadLetter]:
    """Put dead letters back at the tail of their ready queue; returns those actually moved.

    Letters that changed or left the DLQ since they were read, or cannot be decoded, are skipped.
    """
    script = client.register_script(_REQUEUE_LUA)
    moved: list[DeadLetter] = []
    for letter in letters:
        if letter.message is None or letter.raw is None:
            continue
        options = dict(letter.options)
        # Retries compares options.retries with max_retries, and a message that died of
        # exhausted retries would die again at its first failure. Requeueing is an operator's
        # decision after fixing the cause, so it gets the budget of a new message. The stale
        # traceback stays as evidence until the next failure replaces it.
        options["retries"] = 0
        # A message that died on the delay queue (".DQ") goes to the ready queue, as
        # Worker.handle_delayed_messages would have moved it: canonical name, no eta.
        options.pop("eta", None)
        message = {**letter.message, "queue_name": letter.queue, "options": options}
        keys = [
            names.dead_letter_key(namespace, letter.queue),
            names.dead_letter_msgs_key(namespace, letter.queue),
            names.queue_key(namespace, letter.queue),
            names.queue_msgs_key(namespace, letter.queue),
        ]
        if script(keys=keys, args=[letter.redis_id, letter.raw, get_encoder().encode(message)]):
            moved.append(letter)
    return moved


def purge_dead(client: redis.Redis, namespace: str, queue: str | None = None) -> dict[str, int]:
    """Delete the dead letters of one queue or all; returns how many each queue lost."""
    purged: dict[str, int] = {}
    for q in _queues(client, namespace, queue):
        pipe = client.pipeline(transaction=True)
        pipe.zcard(names.dead_letter_key(namespace, q))
        pipe.delete(names.dead_letter_key(namespace, q), names.dead_letter_msgs_key(namespace, q))
        purged[q] = int(pipe.execute()[0])
    return purged


@dataclass(frozen=True)
class HeldMessages:
    """What the broker holds of some queues, decoded (undecodable entries are left out)."""

    # Delayed, ready or in flight (fetched, not yet acked, by a live or a dead worker): every
    # such message is in its queue's message hash until it is acked or dead-lettered.
    live: list[dict[str, Any]]
    dead: list[dict[str, Any]]


def held_messages(client: redis.Redis, namespace: str, queues: Iterable[str]) -> HeldMessages:
    """The messages of `queues` the broker still holds, and their dead letters.

    Read from the message hashes rather than the lists and ack sets: a message stays in its hash
    from enqueue to ack, wherever its id is. The delay queue's hash is read before the queue's:
    a delayed message that comes due is enqueued on the queue before it leaves the delay queue,
    so it is seen at least once.
    """
    live: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    for queue in queues:
        for key, into in (
            (names.queue_msgs_key(namespace, names.delay_queue(queue)), live),
            (names.queue_msgs_key(namespace, queue), live),
            (names.dead_letter_msgs_key(namespace, queue), dead),
        ):
            for _rid, raw in client.hscan_iter(key, count=1000):
                message = _decode(raw)
                if message is not None:
                    into.append(message)
    return HeldMessages(live, dead)
