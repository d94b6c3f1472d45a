"""common/broker/poison.py: decoding, fitting, and the sifting consumer, on fakeredis."""

from __future__ import annotations

import base64
import json
from typing import Any

import dramatiq
import fakeredis
import pytest
from dramatiq.brokers.redis import RedisBroker

from common import names
from common.broker.factory import build_redis_broker
from common.broker.poison import (
    MAX_RAW_BYTES,
    SiftingConsumer,
    SiftingRedisBroker,
    decode_entry,
    raw_fields,
    unfit_reason,
)
from config.settings import Settings

NS = "unit-poison"


def good_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "queue_name": "usage",
        "actor_name": "record_usage",
        "args": [],
        "kwargs": {"event_id": "e"},
        "options": {},
        "message_id": "m-1",
        "message_timestamp": 1,
    }
    return fields | changes


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe not utf-8", "not JSON: UnicodeDecodeError"),
        (b"{not json", "not JSON: JSONDecodeError"),
        (b"", "not JSON: JSONDecodeError"),
        (b"[1, 2]", "not a JSON object: list"),
        (b'"text"', "not a JSON object: str"),
        (json.dumps({"actor_name": "x"}).encode(), "missing fields: args, kwargs"),
        (json.dumps(good_fields(extra=1)).encode(), "unknown fields: extra"),
        (json.dumps(good_fields(kwargs=[1])).encode(), "kwargs is list"),
        (json.dumps(good_fields(message_timestamp="1")).encode(), "message_timestamp is str"),
        (json.dumps(good_fields(message_timestamp=True)).encode(), "message_timestamp is bool"),
        (json.dumps(good_fields(actor_name=None)).encode(), "actor_name is NoneType"),
    ],
)
def test_an_entry_that_is_no_message_says_why(data: bytes, reason: str) -> None:
    message, why = decode_entry(data)
    assert message is None and why is not None and why.startswith(reason)
    assert len(why) <= 300


def test_a_huge_entry_gives_a_bounded_reason_and_bounded_raw_bytes() -> None:
    data = b"{" + b"x" * 1_000_000
    _, why = decode_entry(data)
    assert why is not None and len(why) <= 300
    fields = raw_fields(data)
    assert fields["raw_size"] == len(data) and fields["truncated"] is True
    assert base64.b64decode(fields["raw_base64"]) == data[:MAX_RAW_BYTES]


def test_a_message_decodes_and_fits_its_actor() -> None:
    message, why = decode_entry(json.dumps(good_fields()).encode())
    assert why is None and message is not None and message.kwargs == {"event_id": "e"}


def _run_recharge(run_id: int) -> None: ...


def _takes_all(*args: Any, **kwargs: Any) -> None: ...


class _Actor:
    def __init__(self, fn: Any) -> None:
        self.fn = fn


def test_unknown_actors_and_arguments_that_do_not_bind_are_unfit() -> None:
    actors = {"run_recharge": _Actor(_run_recharge), "record_usage": _Actor(_takes_all)}
    message, _ = decode_entry(json.dumps(good_fields(actor_name="nope")).encode())
    assert message is not None and unfit_reason(message, actors) == "unknown actor 'nope'"
    message, _ = decode_entry(
        json.dumps(good_fields(actor_name="run_recharge", kwargs={"run": 1})).encode()
    )
    assert message is not None
    reason = unfit_reason(message, actors)
    assert reason is not None and reason.startswith("arguments do not fit run_recharge")
    for kwargs in ({"run_id": 1}, {}):
        fits = good_fields(actor_name="run_recharge" if kwargs else "record_usage", kwargs=kwargs)
        message, _ = decode_entry(json.dumps(fits).encode())
        assert message is not None and unfit_reason(message, actors) is None


# --- the consumer, on fakeredis -----------------------------------------------------------


@pytest.fixture
def broker() -> RedisBroker:
    broker = build_redis_broker(
        Settings(CONTACTO_BROKER_NAMESPACE=NS),
        client=fakeredis.FakeRedis(),
        broker_class=SiftingRedisBroker,
    )
    for fn, name, queue in (
        (_takes_all, "record_usage", "usage"),
        (_takes_all, names.ACTOR_UNDECODABLE, "usage"),
        (_run_recharge, "run_recharge", "charges"),
    ):
        dramatiq.actor(broker=broker, actor_name=name, queue_name=queue)(fn)
    return broker


def push_raw(broker: RedisBroker, queue: str, redis_id: str, data: bytes | None) -> None:
    """What a producer writing to the queue by hand does (data None: only the list entry)."""
    client = broker.client
    if data is not None:
        client.hset(names.queue_msgs_key(NS, queue), redis_id, data)
    client.rpush(names.queue_key(NS, queue), redis_id)


def drain(broker: RedisBroker, queue: str) -> tuple[SiftingConsumer, list[Any]]:
    consumer = broker.consume(queue, prefetch=10, timeout=10)
    assert isinstance(consumer, SiftingConsumer)
    got = []
    for _ in range(20):
        message = next(consumer)
        if message is not None:
            got.append(message)
    return consumer, got


def dead(broker: RedisBroker, queue: str) -> list[dict[str, Any]]:
    raws = broker.client.hvals(names.dead_letter_msgs_key(NS, queue))
    return [json.loads(raw) for raw in raws]


def test_on_the_usage_queue_bad_entries_become_stand_ins_beside_good_messages(
    broker: RedisBroker,
) -> None:
    # Given good messages around garbage, an id without data, and JSON without dramatiq's id
    first = broker.enqueue(dramatiq.Message("usage", "record_usage", (), {"n": 1}, {}))
    push_raw(broker, "usage", "garbage-1", b"\xffnot json at all")
    push_raw(broker, "usage", "lonely-id", None)
    push_raw(broker, "usage", "by-hand", json.dumps(good_fields(message_id="h")).encode())
    last = broker.enqueue(dramatiq.Message("usage", "record_usage", (), {"n": 2}, {}))
    # When the consumer hands them out
    consumer, got = drain(broker, "usage")
    # Then nothing raised, the good ones are untouched and in order with the others
    assert [m.actor_name for m in got] == [
        "record_usage",
        names.ACTOR_UNDECODABLE,
        names.ACTOR_UNDECODABLE,
        "record_usage",
        "record_usage",
    ]
    assert got[0].message_id == first.message_id and got[4].message_id == last.message_id
    garbage, lonely, by_hand = got[1], got[2], got[3]
    assert base64.b64decode(garbage.kwargs["raw_base64"]) == b"\xffnot json at all"
    assert garbage.kwargs["reason"].startswith("not JSON") and garbage.kwargs["queue"] == "usage"
    assert base64.b64decode(lonely.kwargs["raw_base64"]) == b"lonely-id"
    assert "without message data" in lonely.kwargs["reason"]
    assert by_hand.message_id == "h" and isinstance(by_hand.options["redis_message_id"], str)
    # And acking each removes every trace from Redis (the raw ids were replaced in place)
    client = broker.client
    assert client.hlen(names.queue_msgs_key(NS, "usage")) == 5
    for message in got:
        consumer.ack(message)
    consumer.close()
    assert client.hlen(names.queue_msgs_key(NS, "usage")) == 0
    assert client.scard(names.acks_key(NS, broker.broker_id, "usage")) == 0
    assert client.llen(names.queue_key(NS, "usage")) == 0
    assert dead(broker, "usage") == []


def test_a_stand_in_requeued_on_shutdown_comes_back_the_same(broker: RedisBroker) -> None:
    push_raw(broker, "usage", "garbage-2", b"<xml/>")
    consumer, (stand_in,) = drain(broker, "usage")
    consumer.requeue([stand_in])  # type: ignore[no-untyped-call]
    consumer.close()
    _, (again,) = drain(broker, "usage")
    assert again.message_id == stand_in.message_id and again.kwargs == stand_in.kwargs


def test_what_was_fetched_but_not_handed_out_goes_back_on_close(broker: RedisBroker) -> None:
    # Given a consumer that fetched four entries and handed out one
    sent = broker.enqueue(dramatiq.Message("usage", "record_usage", (), {"n": 1}, {}))
    push_raw(broker, "usage", "garbage-4", b"nope")
    push_raw(broker, "usage", "lonely-2", None)
    later = broker.enqueue(dramatiq.Message("usage", "record_usage", (), {"n": 2}, {}))
    consumer = broker.consume("usage", prefetch=4, timeout=10)
    first = next(consumer)
    assert first is not None and first.message_id == sent.message_id
    # When it closes (worker shutdown)
    consumer.close()
    # Then the rest is back in the queue, the bad entries as stand-ins, nothing held
    client = broker.client
    assert client.scard(names.acks_key(NS, broker.broker_id, "usage")) == 1  # `first`
    _, got = drain(broker, "usage")
    assert [m.actor_name for m in got] == [names.ACTOR_UNDECODABLE] * 2 + ["record_usage"]
    assert got[2].message_id == later.message_id


def test_on_other_queues_bad_entries_and_unfit_messages_are_dead_lettered_with_a_reason(
    broker: RedisBroker,
) -> None:
    push_raw(broker, "charges", "garbage-3", b"\x00\x01")
    unknown = broker.enqueue(dramatiq.Message("charges", "no_such_actor", (), {"a": 1}, {}))
    misfit = broker.enqueue(dramatiq.Message("charges", "run_recharge", (), {"run": 7}, {}))
    fine = broker.enqueue(dramatiq.Message("charges", "run_recharge", (), {"run_id": 7}, {}))
    consumer, got = drain(broker, "charges")
    assert [m.message_id for m in got] == [fine.message_id]
    consumer.ack(got[0])
    consumer.close()
    letters = {d["actor_name"]: d for d in dead(broker, "charges")}
    assert set(letters) == {names.ACTOR_UNDECODABLE, "no_such_actor", "run_recharge"}
    stand_in = letters[names.ACTOR_UNDECODABLE]
    assert base64.b64decode(stand_in["kwargs"]["raw_base64"]) == b"\x00\x01"
    assert stand_in["options"]["dead_reason"].startswith("not JSON")
    assert letters["no_such_actor"]["options"]["dead_reason"] == "unknown actor 'no_such_actor'"
    assert letters["no_such_actor"]["message_id"] == unknown.message_id
    assert letters["no_such_actor"]["kwargs"] == {"a": 1}
    assert letters["run_recharge"]["message_id"] == misfit.message_id
    assert letters["run_recharge"]["options"]["dead_reason"].startswith("arguments do not fit")
    client = broker.client
    assert client.hlen(names.queue_msgs_key(NS, "charges")) == 0
    assert client.scard(names.acks_key(NS, broker.broker_id, "charges")) == 0


def test_the_factory_gives_every_worker_the_sifting_consumer() -> None:
    broker = build_redis_broker(client=fakeredis.FakeRedis())
    assert isinstance(broker.consume("usage"), SiftingConsumer)
