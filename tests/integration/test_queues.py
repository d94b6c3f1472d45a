"""`queues`: counts, ages and workers read from dramatiq's real Redis keys, in every state."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from common import names
from common.broker.inspect import QueueStats, live_workers, queue_stats
from common.cli.main import main
from config.settings import Settings, get_settings

TIMEOUT_MS = 10_000


@pytest.fixture
def qsettings(namespace: str) -> Settings:
    # No maintenance: it would requeue "orphaned" messages behind the test's back.
    return Settings(
        CONTACTO_BROKER_NAMESPACE=namespace,
        CONTACTO_BROKER_HEARTBEAT_TIMEOUT_MS=TIMEOUT_MS,
        CONTACTO_BROKER_MAINTENANCE_CHANCE=0,
    )


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, qsettings: Settings) -> Iterator[None]:
    monkeypatch.setenv("CONTACTO_BROKER_NAMESPACE", qsettings.broker_namespace)
    monkeypatch.setenv("CONTACTO_BROKER_HEARTBEAT_TIMEOUT_MS", str(TIMEOUT_MS))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def msg(queue: str = "usage", ts: int | None = None, **kwargs: Any) -> Message[Any]:
    message: Message[Any] = Message(
        queue_name=queue, actor_name="record_usage", args=(), kwargs=kwargs, options={}
    )
    return message if ts is None else message.copy(message_timestamp=ts)


def take(broker: RedisBroker, queue: str) -> Any:
    """Fetch one message without acking it: it now sits in this broker's ack set."""
    consumer = broker.consume(queue, prefetch=1, timeout=50)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        proxy = next(consumer)
        if proxy is not None:
            return consumer, proxy
    raise AssertionError(f"nothing to fetch on {queue}")


def by_queue(stats: list[QueueStats]) -> dict[str, QueueStats]:
    return {s.queue: s for s in stats}


def fill_every_state(broker: RedisBroker) -> int:
    """usage: 1 in flight, 3 ready (oldest 90 s), 2 delayed (one held by a worker);
    charges: 1 dead; retries: 1 ready; extra: 1 ready. Returns the oldest timestamp."""
    broker.enqueue(msg(event_id="in-flight"))
    take(broker, "usage")
    old = int(time.time() * 1000) - 90_000
    broker.enqueue(msg(event_id="oldest", ts=old))
    broker.enqueue(msg(event_id="r2"))
    broker.enqueue(msg(event_id="r3"))
    broker.enqueue(msg(event_id="d1"), delay=60_000)
    broker.enqueue(msg(event_id="d2"), delay=60_000)
    take(broker, "usage.DQ")  # a worker holds delayed messages until their eta
    broker.enqueue(msg("charges", account_id="a1"))
    consumer, proxy = take(broker, "charges")
    consumer.nack(proxy)
    broker.enqueue(msg("retries"))
    broker.enqueue(msg("extra"))
    return old


def test_counts_every_state(broker: RedisBroker, client: redis.Redis, namespace: str) -> None:
    fill_every_state(broker)
    stats = queue_stats(client, namespace, TIMEOUT_MS)
    assert [s.queue for s in stats] == ["usage", "charges", "retries", "extra"]
    q = by_queue(stats)
    usage = q["usage"]
    assert (usage.ready, usage.delayed, usage.in_flight, usage.dead) == (3, 2, 1, 0)
    assert usage.oldest_ready_age_s is not None and 90 <= usage.oldest_ready_age_s < 100
    assert usage.orphaned == 0
    charges = q["charges"]
    assert (charges.ready, charges.delayed, charges.in_flight, charges.dead) == (0, 0, 0, 1)
    assert charges.oldest_ready_age_s is None
    assert charges.oldest_dead_age_s is not None and 0 <= charges.oldest_dead_age_s < 10
    assert usage.oldest_dead_age_s is None
    retries = q["retries"]
    assert (retries.ready, retries.in_flight, retries.dead) == (1, 0, 0)
    assert retries.oldest_ready_age_s is not None and retries.oldest_ready_age_s < 10
    assert (q["extra"].ready, q["extra"].delayed) == (1, 0)


def test_empty_namespace_lists_the_known_queues(client: redis.Redis, namespace: str) -> None:
    stats = queue_stats(client, namespace, TIMEOUT_MS)
    assert stats == [QueueStats(q, 0, 0, 0, 0, None, 0, None) for q in names.QUEUES]


def test_in_flight_of_a_silent_worker_is_orphaned(
    broker: RedisBroker, client: redis.Redis, namespace: str
) -> None:
    broker.enqueue(msg(event_id="x"))
    take(broker, "usage")
    stale = int(time.time() * 1000) - TIMEOUT_MS - 5_000
    client.zadd(names.heartbeats_key(namespace), {broker.broker_id: stale})
    usage = by_queue(queue_stats(client, namespace, TIMEOUT_MS))["usage"]
    assert (usage.in_flight, usage.orphaned) == (1, 1)
    assert live_workers(client, namespace, TIMEOUT_MS) == []


def test_live_workers_follow_dramatiqs_timeout_rule(
    broker: RedisBroker, client: redis.Redis, namespace: str
) -> None:
    broker.enqueue(msg())  # every dispatch is a heartbeat of this broker
    now = int(time.time() * 1000) + 1_000
    client.zadd(
        names.heartbeats_key(namespace),
        {"fresh": now - 2_000, "inside": now - TIMEOUT_MS + 1, "dead": now - TIMEOUT_MS},
    )
    workers = {
        w.id: w.last_heartbeat_age_s
        for w in live_workers(client, namespace, TIMEOUT_MS, now_ms=now)
    }
    # dispatch.lua treats score <= now - timeout as dead; the boundary is excluded here too.
    assert set(workers) == {broker.broker_id, "fresh", "inside"}
    assert workers["fresh"] == 2.0
    assert workers["inside"] == (TIMEOUT_MS - 1) / 1000
    assert 1.0 <= workers[broker.broker_id] < 5


def test_cli_json(
    broker: RedisBroker, namespace: str, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_every_state(broker)
    assert main(["queues", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {
        "namespace",
        "queues",
        "workers",
        "dead_letter_warn_after_s",
        "dead_message_ttl_days",
    }
    assert (out["dead_letter_warn_after_s"], out["dead_message_ttl_days"]) == (86400.0, 30.0)
    assert out["namespace"] == namespace
    usage = out["queues"][0]
    age = usage.pop("oldest_ready_age_s")
    assert 90 <= age < 100
    assert usage == {
        "queue": "usage",
        "ready": 3,
        "delayed": 2,
        "in_flight": 1,
        "orphaned": 0,
        "dead": 0,
        "oldest_dead_age_s": None,
    }
    assert [q["queue"] for q in out["queues"]] == ["usage", "charges", "retries", "extra"]
    assert out["queues"][1]["dead"] == 1 and out["queues"][1]["oldest_ready_age_s"] is None
    assert 0 <= out["queues"][1]["oldest_dead_age_s"] < 10
    assert [w["id"] for w in out["workers"]] == [broker.broker_id]
    assert 0 <= out["workers"][0]["last_heartbeat_age_s"] < 5


def test_dead_letters_older_than_a_day_are_warned_about(
    broker: RedisBroker,
    client: redis.Redis,
    namespace: str,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each is work not done (a debit, a recharge) and dramatiq deletes it after its TTL."""
    fill_every_state(broker)  # charges: one dead letter, just now
    assert main(["queues"]) == 0
    assert "warning" not in capsys.readouterr().out
    dead_key = names.dead_letter_key(namespace, "charges")
    [member] = cast(list[bytes], client.zrange(dead_key, 0, -1))
    client.zadd(dead_key, {member: int(time.time() * 1000) - 90_000_000})  # 25 hours ago
    assert main(["queues"]) == 0
    out = capsys.readouterr().out
    assert (
        "warning: 1 dead letter(s) in charges, the oldest dead for 1d01h: see "
        "`contacto-billing dlq list`; dramatiq deletes them after 30 days"
    ) in out


def test_cli_table(
    broker: RedisBroker, namespace: str, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_every_state(broker)
    assert main(["queues"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"namespace {namespace}  ·  1 live worker(s)")
    header = lines[2]
    assert header.split() == [
        "QUEUE", "READY", "DELAYED", "IN-FLIGHT", "ORPHANED", "DEAD", "OLDEST-READY"
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[3:7]}
    assert re.fullmatch(r"usage 3 2 1 0 0 1m3\ds", " ".join(rows["usage"].split()))
    assert rows["charges"].split() == ["charges", "0", "0", "0", "0", "1", "-"]
    # Right-aligned numbers: every row ends its READY column where the header does.
    end = header.index("READY") + len("READY")
    assert all(row[end - 1] != " " and row[end] == " " for row in rows.values())
    assert lines[8].split() == ["WORKER", "LAST-BEAT"]
    assert lines[9].split()[0] == broker.broker_id


def test_cli_watch_refreshes_until_ctrl_c(
    broker: RedisBroker,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt
        broker.enqueue(msg(event_id="between refreshes"))

    monkeypatch.setattr("common.cli.queues.time.sleep", sleep)
    assert main(["queues", "--watch", "--interval", "0.5"]) == 0
    out = capsys.readouterr().out
    # Not a terminal: each refresh is appended as plain text, no screen-control codes.
    assert "\x1b" not in out
    screens = re.split(r"^(?=namespace )", out, flags=re.MULTILINE)[1:]
    assert sleeps == [0.5, 0.5]
    assert len(screens) == 2
    assert [s.splitlines()[3].split()[:2] for s in screens] == [["usage", "0"], ["usage", "1"]]

    sleeps.clear()
    assert main(["queues", "--watch", "--json"]) == 0
    frames = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sleeps == [2.0, 2.0]
    assert [f["queues"][0]["ready"] for f in frames] == [1, 2]


def test_cli_unreachable_redis(
    cli_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:secret@127.0.0.1:1/0")
    get_settings.cache_clear()
    assert main(["queues"]) == 2  # cannot connect: not a refusal (1)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("contacto-billing: error: cannot reach Redis at 127.0.0.1:1: ")
    assert captured.err.count("\n") == 1 and "secret" not in captured.err


def test_installed_command(broker: RedisBroker, namespace: str) -> None:
    broker.enqueue(msg("charges"))
    exe = Path(sys.executable).with_name("contacto-billing")
    env = {**os.environ, "CONTACTO_BROKER_NAMESPACE": namespace}
    done = subprocess.run(
        [str(exe), "queues", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    charges = json.loads(done.stdout)["queues"][1]
    assert (charges["queue"], charges["ready"]) == ("charges", 1)
