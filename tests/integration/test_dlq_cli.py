"""`dlq list|show|requeue|purge` against dead letters made by dramatiq itself, in real Redis."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from common import names
from common.audit import dead_letters_check
from common.broker.inspect import dead_letters, queue_stats, requeue_dead
from common.cli.main import main
from config.settings import Settings, get_settings

Cli = tuple[int, str, str]


@pytest.fixture
def qsettings(namespace: str) -> Settings:
    return Settings(CONTACTO_BROKER_NAMESPACE=namespace, CONTACTO_BROKER_MAINTENANCE_CHANCE=0)


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, namespace: str, capsys: pytest.CaptureFixture[str]
) -> Iterator[Any]:
    monkeypatch.setenv("CONTACTO_BROKER_NAMESPACE", namespace)
    get_settings.cache_clear()

    def run(*argv: str) -> Cli:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    get_settings.cache_clear()


def kill(broker: RedisBroker, queue: str = "usage", *, delay: int | None = None, **kw: Any) -> Any:
    """Enqueue, fetch and nack one message, as a worker does when it fails for good."""
    message: Message[Any] = Message(
        queue_name=queue,
        actor_name="record_usage",
        args=(),
        kwargs=kw,
        options={"retries": 5, "traceback": "Traceback ...\nValueError: bad amount\n"},
    )
    sent = broker.enqueue(message, delay=delay)
    consumer = broker.consume(sent.queue_name, prefetch=1, timeout=50)
    proxy = None
    while proxy is None:
        proxy = next(consumer)
    consumer.nack(proxy)
    time.sleep(0.002)  # distinct death times, so "oldest first" is observable
    return sent


def stored(client: redis.Redis, key: str, field: str) -> dict[str, Any]:
    raw = client.hget(key, field)
    assert raw is not None
    return dict(json.loads(raw))


def test_list_shows_what_a_real_worker_dead_lettered(
    broker: RedisBroker, client: redis.Redis, namespace: str, cli: Any
) -> None:
    def charge(account_id: str) -> None:
        raise RuntimeError(f"card network down for {account_id}")

    actor = dramatiq.actor(
        broker=broker,
        actor_name="charge_test",
        queue_name="charges",
        max_retries=1,
        min_backoff=10,
        max_backoff=20,
    )(charge)
    sent = actor.send(account_id="acct-1")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while not client.zcard(names.dead_letter_key(namespace, "charges")):
            assert time.monotonic() < deadline, "the message never died"
            time.sleep(0.05)
    finally:
        worker.stop()

    code, out, _ = cli("dlq", "list", "--json")
    assert code == 0
    listing = json.loads(out)
    assert (listing["namespace"], listing["total"]) == (namespace, 1)
    [row] = listing["messages"]
    assert row["message_id"] == sent.message_id
    assert (row["queue"], row["actor"], row["retries"]) == ("charges", "charge_test", 1)
    assert row["kwargs_preview"] == '{"account_id": "acct-1"}'
    # Retries stored the first failure's traceback in the copy it re-enqueued.
    assert row["error"] == "RuntimeError: card network down for acct-1"
    assert "Traceback (most recent call last)" in row["traceback"]
    assert abs(datetime.fromisoformat(row["died_at"]).timestamp() - time.time()) < 30

    code, out, _ = cli("dlq", "list")
    assert code == 0
    assert "1 dead-lettered message(s) in all queues" in out
    assert "    error:  RuntimeError: card network down for acct-1" in out
    assert sent.message_id in out


def test_list_oldest_first_with_limit_and_queue(broker: RedisBroker, cli: Any) -> None:
    first = kill(broker, "usage", event_id="e1")
    second = kill(broker, "charges", account_id="a")
    kill(broker, "usage", event_id="e3")
    code, out, _ = cli("dlq", "list", "--limit", "2", "--json")
    listing = json.loads(out)
    assert code == 0 and listing["total"] == 3
    assert [m["message_id"] for m in listing["messages"]] == [first.message_id, second.message_id]
    code, out, _ = cli("dlq", "list", "charges", "--json")
    assert [m["message_id"] for m in json.loads(out)["messages"]] == [second.message_id]
    code, out, _ = cli("dlq", "list", "--limit", "1")
    assert "3 dead-lettered message(s) in all queues" in out and "showing the oldest 1" in out


def test_show_by_message_id_or_redis_id(
    broker: RedisBroker, client: redis.Redis, namespace: str, cli: Any
) -> None:
    sent = kill(broker, event_id="e1", amount="1.50")
    redis_id = sent.options["redis_message_id"]
    whole = stored(client, names.dead_letter_msgs_key(namespace, "usage"), redis_id)
    for ident in (sent.message_id, redis_id):
        code, out, _ = cli("dlq", "show", ident, "--json")
        shown = json.loads(out)
        assert code == 0
        assert (shown["queue"], shown["redis_message_id"]) == ("usage", redis_id)
        assert shown["message"] == whole
    code, out, _ = cli("dlq", "show", sent.message_id)
    assert '"amount": "1.50"' in out and "ValueError: bad amount" in out

    code, out, err = cli("dlq", "show", "no-such-id")
    assert (code, out) == (1, "")
    expected = f"no dead-lettered message no-such-id in namespace {namespace}"
    assert err == f"contacto-billing: error: {expected}\n"


def test_requeue_puts_it_back_ready_with_data_intact(
    broker: RedisBroker, client: redis.Redis, namespace: str, cli: Any
) -> None:
    sent = kill(broker, event_id="e1", amount="2.00")
    redis_id = sent.options["redis_message_id"]
    before = stored(client, names.dead_letter_msgs_key(namespace, "usage"), redis_id)

    code, out, _ = cli("dlq", "requeue", sent.message_id, "--json")
    assert code == 0
    assert json.loads(out)["requeued"] == [
        {"queue": "usage", "message_id": sent.message_id, "redis_message_id": redis_id}
    ]
    assert client.zcard(names.dead_letter_key(namespace, "usage")) == 0
    assert client.hlen(names.dead_letter_msgs_key(namespace, "usage")) == 0
    assert client.lrange(names.queue_key(namespace, "usage"), 0, -1) == [redis_id.encode()]
    after = stored(client, names.queue_msgs_key(namespace, "usage"), redis_id)
    assert after["options"].pop("retries") == 0 and before["options"].pop("retries") == 5
    assert after == before  # everything else is untouched, the traceback included

    usage = queue_stats(client, namespace, 60_000)[0]
    assert (usage.ready, usage.dead) == (1, 0)
    # And dramatiq delivers it again as the same message.
    proxy = None
    consumer = broker.consume("usage", prefetch=1, timeout=50)
    while proxy is None:
        proxy = next(consumer)
    assert (proxy.message_id, proxy.kwargs) == (
        sent.message_id,
        {"event_id": "e1", "amount": "2.00"},
    )


def test_requeue_of_a_message_that_died_delayed(
    broker: RedisBroker, client: redis.Redis, namespace: str, cli: Any
) -> None:
    sent = kill(broker, delay=60_000, event_id="late")
    redis_id = sent.options["redis_message_id"]
    died = stored(client, names.dead_letter_msgs_key(namespace, "usage"), redis_id)
    assert died["queue_name"] == "usage.DQ" and "eta" in died["options"]
    assert cli("dlq", "requeue", redis_id)[0] == 0
    back = stored(client, names.queue_msgs_key(namespace, "usage"), redis_id)
    assert back["queue_name"] == "usage" and "eta" not in back["options"]
    assert client.lrange(names.queue_key(namespace, "usage"), 0, -1) == [redis_id.encode()]


def test_requeue_all_of_one_queue(
    broker: RedisBroker, client: redis.Redis, namespace: str, cli: Any
) -> None:
    kill(broker, "usage", event_id="e1")
    kill(broker, "usage", event_id="e2")
    kill(broker, "charges", account_id="a")
    code, out, _ = cli("dlq", "requeue", "--all", "usage", "--json")
    assert code == 0
    result = json.loads(out)
    assert [r["queue"] for r in result["requeued"]] == ["usage", "usage"]
    assert result["skipped"] == []
    stats = {s.queue: (s.ready, s.dead) for s in queue_stats(client, namespace, 60_000)}
    assert stats["usage"] == (2, 0) and stats["charges"] == (0, 1)
    assert cli("dlq", "requeue")[0] == 1  # neither an id nor --all


def test_requeue_skips_a_letter_changed_since_it_was_read(
    broker: RedisBroker, client: redis.Redis, namespace: str
) -> None:
    sent = kill(broker, event_id="e1")
    letters = dead_letters(client, namespace)
    client.hset(
        names.dead_letter_msgs_key(namespace, "usage"), sent.options["redis_message_id"], b"{}"
    )
    assert requeue_dead(client, namespace, letters) == []
    assert client.llen(names.queue_key(namespace, "usage")) == 0
    assert client.zcard(names.dead_letter_key(namespace, "usage")) == 1


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def dead_counts(client: redis.Redis, namespace: str) -> dict[str, int]:
    return {q: int(client.zcard(names.dead_letter_key(namespace, q))) for q in ("usage", "charges")}


def test_purge_refuses_without_terminal_or_yes(
    broker: RedisBroker,
    client: redis.Redis,
    namespace: str,
    cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kill(broker, "usage", event_id="e1")
    monkeypatch.setattr("sys.stdin", io.StringIO("usage\n"))
    code, out, err = cli("dlq", "purge", "usage")
    assert (code, out) == (1, "")
    assert err == (
        "contacto-billing: error: refusing to purge without a terminal to confirm on; pass --yes\n"
    )
    assert dead_counts(client, namespace) == {"usage": 1, "charges": 0}


def test_purge_on_a_terminal_needs_the_queue_name(
    broker: RedisBroker,
    client: redis.Redis,
    namespace: str,
    cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kill(broker, "usage", event_id="e1")
    kill(broker, "charges", account_id="a")
    monkeypatch.setattr("sys.stdin", _Tty("charges\n"))
    code, _, err = cli("dlq", "purge", "usage")
    assert code == 1 and "not confirmed" in err
    assert dead_counts(client, namespace) == {"usage": 1, "charges": 1}
    monkeypatch.setattr("sys.stdin", _Tty("usage\n"))
    code, out, _ = cli("dlq", "purge", "usage")
    assert code == 0 and "Type 'usage' to confirm" in out
    assert dead_counts(client, namespace) == {"usage": 0, "charges": 1}


def test_purge_yes_removes_every_dead_letter(
    broker: RedisBroker, client: redis.Redis, namespace: str, cli: Any
) -> None:
    kill(broker, "usage", event_id="e1")
    kill(broker, "usage", event_id="e2")
    kill(broker, "charges", account_id="a")
    broker.enqueue(Message("usage", "record_usage", (), {"event_id": "alive"}, {}))
    code, out, _ = cli("dlq", "purge", "--yes", "--json")
    assert code == 0
    assert json.loads(out) == {"namespace": namespace, "purged": {"charges": 1, "usage": 2}}
    assert dead_counts(client, namespace) == {"usage": 0, "charges": 0}
    assert client.exists(names.dead_letter_msgs_key(namespace, "usage")) == 0
    assert client.llen(names.queue_key(namespace, "usage")) == 1  # only the dead are purged


def test_unreachable_redis_is_one_line(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    for argv in (["list"], ["show", "x"], ["requeue", "--all"], ["purge", "--yes"]):
        code, out, err = cli("dlq", *argv)
        assert (code, out) == (2, "")  # cannot connect: not a refusal (1)
        assert err.startswith("contacto-billing: error: cannot reach Redis at 127.0.0.1:1: ")
        assert err.count("\n") == 1


def test_audit_reports_dead_letters_older_than_a_day(
    broker: RedisBroker, client: redis.Redis, namespace: str, qsettings: Settings, cli: Any
) -> None:
    """A dead letter is work not done, and dramatiq deletes it after its TTL: after a day it is
    an audit failure, with what it was."""
    sent = kill(broker, event_id="e1")
    now = int(time.time() * 1000)
    assert dead_letters_check(client, qsettings, now_ms=now).offending == []
    dead_key = names.dead_letter_key(namespace, "usage")
    [member] = cast(list[bytes], client.zrange(dead_key, 0, -1))
    client.zadd(dead_key, {member: now - 86_400_001})
    result = dead_letters_check(client, qsettings, now_ms=now)
    assert result.name == "dead_letters_handled"
    assert result.offending == [
        {
            "queue": "usage",
            "message_id": sent.message_id,
            "actor": "record_usage",
            "died_at": datetime.fromtimestamp((now - 86_400_001) / 1000, UTC),
            "age_s": 86400,
        }
    ]
    code, out, _ = cli("audit", "--json")
    [check] = [c for c in json.loads(out)["checks"] if c["name"] == "dead_letters_handled"]
    assert code == 1 and not check["ok"] and check["offending"][0]["message_id"] == sent.message_id
