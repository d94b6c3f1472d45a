"""`queues` and `dlq` when BROKER_URL is amqp://: what AMQP itself can tell (no management
plugin needed). Same commands, same `--json` keys where the two brokers know the same thing;
RabbitMQ does not expose in-flight counts or ages over AMQP, so those are left out."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
from rich.text import Text

from common.broker import rabbitmq
from common.cli._common import CliError, SetupError, print_json
from common.cli._render import render_table, show
from common.names import QUEUES
from config.settings import Settings

PEEK_LIMIT_MAX = 10_000


def _url(settings: Settings) -> str:
    assert settings.broker_url is not None
    return settings.broker_url


def _queues_of(queue: str | None) -> tuple[str, ...]:
    if queue is None:
        return QUEUES
    if queue not in QUEUES:
        raise CliError(f"unknown queue {queue!r}; queues: {', '.join(QUEUES)}")
    return (queue,)


@contextmanager
def _guard(settings: Settings) -> Iterator[None]:
    """RabbitMQ that does not answer becomes a one-line SetupError, as Redis does."""
    try:
        yield
    except pika.exceptions.AMQPConnectionError as exc:
        where = _safe(_url(settings))
        raise SetupError(f"cannot reach RabbitMQ at {where}: {type(exc).__name__}") from None


def _safe(url: str) -> str:
    # amqp://user:password@host/vhost -> amqp://user@host/vhost: never echo a password.
    scheme, _, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':', 1)[0]}{at}{location}" if at else url


def snapshot(settings: Settings) -> dict[str, Any]:
    with _guard(settings):
        stats = rabbitmq.queue_stats(_url(settings), QUEUES)
    return {
        "broker": "rabbitmq",
        "url": _safe(_url(settings)),
        "queues": [
            {
                "queue": s.queue,
                "ready": s.ready,
                "delayed": s.delayed,
                "dead": s.dead,
                "consumers": s.consumers,
            }
            for s in stats
        ],
    }


def _table(snap: dict[str, Any]) -> Any:
    rows = [
        [q["queue"], str(q["ready"]), str(q["delayed"]), str(q["dead"]), str(q["consumers"])]
        for q in snap["queues"]
    ]
    return render_table(["QUEUE", "READY", "DELAYED", "DEAD", "CONSUMERS"], rows)


def queues(args: argparse.Namespace, settings: Settings) -> int:
    while True:
        snap = snapshot(settings)
        if args.json:
            print_json(snap)
        else:
            show(Text(f"RabbitMQ {snap['url']}  ·  {time.strftime('%H:%M:%S')}"), _table(snap))
        if not args.watch:
            return 0
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def _summary(letter: rabbitmq.RabbitDeadLetter) -> dict[str, Any]:
    message = letter.message or {}
    return {
        "queue": letter.queue,
        "message_id": letter.message_id,
        "actor": letter.actor,
        "retries": letter.options.get("retries", 0),
        "kwargs": message.get("kwargs"),
        "reason": letter.reason,
        "traceback": letter.options.get("traceback"),
        # Bytes that are not a dramatiq message are shown as they are (cut short).
        "raw": None if letter.message is not None else letter.raw[:2000].decode("utf-8", "replace"),
    }


def dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    names = _queues_of(args.queue)
    with _guard(settings):
        letters = rabbitmq.dead_letters(_url(settings), names, args.limit)
        total = sum(s.dead for s in rabbitmq.queue_stats(_url(settings), names))
    if args.json:
        print_json(
            {"broker": "rabbitmq", "total": total, "messages": [_summary(x) for x in letters]}
        )
        return 0
    where = f"queue {args.queue}" if args.queue else "all queues"
    shown = f", showing {len(letters)}" if len(letters) < total else ""
    print(f"{total} dead-lettered message(s) in {where} (RabbitMQ){shown}")
    if letters:
        rows = [
            [
                x.queue,
                x.actor or "?",
                x.message_id or "(undecodable)",
                str(x.options.get("retries", 0)),
            ]
            for x in letters
        ]
        show(render_table(["QUEUE", "ACTOR", "MESSAGE-ID", "RETRIES"], rows))
    return 0


def dlq_show(args: argparse.Namespace, settings: Settings) -> int:
    with _guard(settings):
        letters = rabbitmq.dead_letters(_url(settings), QUEUES, PEEK_LIMIT_MAX)
    found = [x for x in letters if x.message_id == args.message_id]
    if not found:
        raise CliError(f"no dead letter with message id {args.message_id}")
    print_json(_summary(found[0]) | {"message": found[0].message})
    return 0


def dlq_requeue(args: argparse.Namespace, settings: Settings) -> int:
    names = _queues_of(args.target if args.all else args.queue)
    with _guard(settings):
        moved, skipped = rabbitmq.requeue_dead(
            _url(settings), names, None if args.all else args.target
        )
    if args.json:
        print_json(
            {
                "broker": "rabbitmq",
                "requeued": [{"queue": x.queue, "message_id": x.message_id} for x in moved],
                "skipped": [{"queue": x.queue, "message_id": x.message_id} for x in skipped],
            }
        )
    else:
        print(f"requeued {len(moved)} message(s)")
        for x in moved:
            print(f"  {x.queue}  {x.message_id}")
        for x in skipped:
            print(f"  skipped {x.queue}: undecodable")
    if not args.all and not moved:
        raise CliError(f"{args.target} was not requeued: no such dead letter, or undecodable")
    return 0


def dlq_purge(queue: str | None, settings: Settings) -> dict[str, int]:
    with _guard(settings):
        return rabbitmq.purge_dead(_url(settings), _queues_of(queue))
