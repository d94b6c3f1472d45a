"""`contacto-billing enqueue usage`: what developers send as test jobs lands on the queue."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from common.cli.main import main
from config.settings import get_settings


@pytest.fixture
def queue(namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("CONTACTO_BROKER_NAMESPACE", namespace)
    get_settings.cache_clear()
    client = redis.Redis.from_url(get_settings().redis_url)

    def messages() -> list[dict[str, Any]]:
        ids = client.lrange(f"{namespace}:usage", 0, -1)
        stored = [client.hget(f"{namespace}:usage.msgs", i) for i in ids]
        assert None not in stored, "a message id without its message"
        return [json.loads(raw) for raw in stored if raw is not None]

    yield messages
    for key in client.scan_iter(f"{namespace}*"):
        client.delete(key)
    client.close()
    get_settings.cache_clear()


def test_count_sends_that_many_contract_shaped_messages(
    queue: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "enqueue",
                "usage",
                "acct-x",
                "--amount",
                "0.25",
                "--count",
                "5",
                "--currency",
                "EUR",
                "--event-id",
                "job",
            ]
        )
        == 0
    )
    sent = queue()
    assert [m["actor_name"] for m in sent] == ["record_usage"] * 5
    assert [m["kwargs"]["event_id"] for m in sent] == [f"job-{i}" for i in range(1, 6)]
    first = sent[0]["kwargs"]
    assert (first["account_id"], first["amount"], first["currency"]) == ("acct-x", "0.25", "EUR")
    assert set(first) == {"event_id", "account_id", "amount", "currency", "occurred_at", "kind"}
    out = capsys.readouterr().out
    assert "sent 5 event(s) in 5 record_usage message(s)" in out and "job-1" in out


def test_batches_and_json_summary(queue: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "enqueue",
                "usage",
                "acct-y",
                "--amount",
                "1",
                "--count",
                "250",
                "--currency",
                "USD",
                "--batch-size",
                "100",
                "--json",
            ]
        )
        == 0
    )
    sent = queue()
    assert [len(m["kwargs"]["events"]) for m in sent] == [100, 100, 50]
    summary = json.loads(capsys.readouterr().out)
    assert (summary["messages"], summary["events"], summary["actor"]) == (
        3,
        250,
        "record_usage_batch",
    )


def test_rate_paces_the_sending(queue: Any) -> None:
    started = time.monotonic()
    assert (
        main(
            [
                "enqueue",
                "usage",
                "acct-z",
                "--amount",
                "1",
                "--count",
                "11",
                "--currency",
                "USD",
                "--rate",
                "50",
            ]
        )
        == 0
    )
    assert time.monotonic() - started >= 0.19  # 10 gaps of 20 ms
    assert len(queue()) == 11


def test_a_file_of_json_lines_is_sent_verbatim(queue: Any, tmp_path: Any) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        {
            "event_id": "f1",
            "account_id": "a",
            "amount": "1",
            "currency": "USD",
            "occurred_at": "2026-11-26T00:00:00Z",
        },
        {
            "event_id": "f2",
            "account_id": "a",
            "amount": 1.5,
            "currency": "USD",
            "occurred_at": "2026-11-26T00:00:00Z",
        },
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert main(["enqueue", "usage", "--file", str(path)]) == 0
    assert [m["kwargs"] for m in queue()] == lines  # the bad amount too: the worker rejects it


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["enqueue", "usage", "acct", "--amount", "1", "--count", "0"], "--count"),
        (["enqueue", "usage", "acct"], "--amount"),
        (
            [
                "enqueue",
                "usage",
                "acct",
                "--amount",
                "1",
                "--batch-size",
                "5000",
                "--currency",
                "USD",
            ],
            "--batch-size",
        ),
    ],
)
def test_refusals(
    queue: Any, capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    assert main(argv) == 1
    assert reason in capsys.readouterr().err
    assert queue() == []


def test_an_amount_that_is_not_a_decimal_string_is_refused_by_argparse() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["enqueue", "usage", "acct", "--amount", "1e3"])
    assert exc.value.code == 2
