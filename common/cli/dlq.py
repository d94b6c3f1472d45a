"""`contacto-billing dlq list|show|requeue|purge`: dramatiq's dead-lettered messages."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import redis
from rich.text import Text

from common.broker.inspect import (
    DeadLetter,
    dead_count,
    dead_letters,
    find_dead,
    purge_dead,
    requeue_dead,
)
from common.cli import _rabbitmq
from common.cli._common import CliError, print_json
from common.cli._connect import redis_client
from common.cli._render import render_table, show, table_lines
from config.settings import get_settings

PREVIEW_CHARS = 80


def register(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="dead-lettered messages").add_subparsers(
        dest="dlq_cmd", required=True, metavar="ACTION"
    )
    p = dlq.add_parser("list", help="dead letters, oldest death first")
    p.add_argument("queue", nargs="?", metavar="QUEUE")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)

    p = dlq.add_parser("show", help="one dead letter, whole")
    p.add_argument("message_id", metavar="MESSAGE_ID", help="dramatiq message id or Redis id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_show)

    p = dlq.add_parser(
        "requeue",
        help="put dead letters back on their ready queue with a fresh retry budget",
        usage="%(prog)s [-h] [--json] (MESSAGE_ID [QUEUE] | --all [QUEUE])",
    )
    p.add_argument("target", nargs="?", metavar="MESSAGE_ID", help="with --all: the QUEUE")
    p.add_argument("queue", nargs="?", metavar="QUEUE", help="look only in this queue")
    p.add_argument("--all", action="store_true", help="every dead letter (of QUEUE if given)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_requeue)

    p = dlq.add_parser("purge", help="delete dead letters for good")
    p.add_argument("queue", nargs="?", metavar="QUEUE", help="default: every queue")
    p.add_argument("--yes", action="store_true", help="do not ask (required without a terminal)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_purge)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _died_at(letter: DeadLetter) -> datetime:
    return datetime.fromtimestamp(letter.died_at_ms / 1000, UTC)


def _error(letter: DeadLetter) -> str | None:
    """The exception line of the stored traceback: its last non-blank line."""
    lines = [line for line in (letter.traceback or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _kwargs_preview(letter: DeadLetter) -> str:
    if letter.message is None:
        return "<undecodable message>"
    text = json.dumps(letter.message.get("kwargs", {}), default=str, ensure_ascii=False)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _summary(letter: DeadLetter) -> dict[str, Any]:
    return {
        "message_id": letter.message_id,
        "redis_message_id": letter.redis_id,
        "queue": letter.queue,
        "actor": letter.actor,
        "died_at": _died_at(letter).isoformat(timespec="milliseconds"),
        "retries": letter.options.get("retries", 0),
        "kwargs_preview": _kwargs_preview(letter),
        "error": _error(letter),
        "dead_reason": letter.dead_reason,
        "traceback": letter.traceback,
    }


def _list(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.broker_is_rabbitmq:
        return _rabbitmq.dlq_list(args, settings)
    ns = settings.broker_namespace
    with redis_client(settings) as client:
        letters = dead_letters(client, ns, args.queue, limit=args.limit)
        total = dead_count(client, ns, args.queue)
    if args.json:
        print_json({"namespace": ns, "total": total, "messages": [_summary(x) for x in letters]})
        return 0
    where = f"queue {args.queue}" if args.queue else "all queues"
    print(f"{total} dead-lettered message(s) in {where} of namespace {ns}", end="")
    print(f", showing the oldest {len(letters)}" if len(letters) < total else "")
    if not letters:
        return 0
    rows = [
        [
            _died_at(x).strftime("%Y-%m-%d %H:%M:%S"),
            x.queue,
            x.actor or "?",
            x.message_id,
            str(x.options.get("retries", 0)),
        ]
        for x in letters
    ]
    table = render_table(["DIED (UTC)", "QUEUE", "ACTOR", "MESSAGE-ID", "RETRIES"], rows, left=4)
    head, *lines = table_lines(table)
    show(head)
    for line, letter in zip(lines, letters, strict=True):
        show(
            line,
            Text(f"    kwargs: {_kwargs_preview(letter)}"),
            Text(f"    error:  {_error(letter) or '(no traceback stored)'}")
            if letter.dead_reason is None
            else Text(f"    reason: {letter.dead_reason}"),
        )
    return 0


def _one(client: redis.Redis, ns: str, message_id: str, queue: str | None = None) -> DeadLetter:
    found = find_dead(client, ns, message_id, queue)
    if not found:
        raise CliError(f"no dead-lettered message {message_id} in namespace {ns}")
    if len(found) > 1:
        ids = ", ".join(f"{x.queue}/{x.redis_id}" for x in found)
        raise CliError(f"{message_id} matches {len(found)} dead letters ({ids}); use a Redis id")
    return found[0]


def _show(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.broker_is_rabbitmq:
        return _rabbitmq.dlq_show(args, settings)
    with redis_client(settings) as client:
        letter = _one(client, settings.broker_namespace, args.message_id)
    whole = {
        "queue": letter.queue,
        "redis_message_id": letter.redis_id,
        "died_at": _died_at(letter).isoformat(timespec="milliseconds"),
        "message": letter.message,
    }
    if args.json:
        print_json(whole)
        return 0
    print(f"message {letter.message_id} (Redis id {letter.redis_id})")
    print(f"queue {letter.queue}, actor {letter.actor or '?'}, died {whole['died_at']}")
    if letter.dead_reason:
        print(f"put aside unrun: {letter.dead_reason}")
    print(json.dumps(letter.message, indent=2, default=str, ensure_ascii=False))
    if letter.traceback:
        print("traceback stored by the Retries middleware:")
        print(letter.traceback.rstrip())
    return 0


def _requeue(args: argparse.Namespace) -> int:
    if args.all and args.queue is not None:
        raise CliError("with --all, give at most one QUEUE")
    if not args.all and args.target is None:
        raise CliError("give a MESSAGE_ID or --all")
    settings = get_settings()
    if settings.broker_is_rabbitmq:
        return _rabbitmq.dlq_requeue(args, settings)
    ns = settings.broker_namespace
    with redis_client(settings) as client:
        if args.all:
            letters = dead_letters(client, ns, args.target)
        else:
            letters = [_one(client, ns, args.target, args.queue)]
        moved = requeue_dead(client, ns, letters)
    moved_ids = {x.redis_id for x in moved}
    skipped = [x for x in letters if x.redis_id not in moved_ids]

    def brief(x: DeadLetter) -> dict[str, Any]:
        return {"queue": x.queue, "message_id": x.message_id, "redis_message_id": x.redis_id}

    if args.json:
        print_json(
            {
                "namespace": ns,
                "requeued": [brief(x) for x in moved],
                "skipped": [brief(x) for x in skipped],
            }
        )
    else:
        print(f"requeued {len(moved)} message(s) in namespace {ns}")
        for x in moved:
            print(f"  {x.queue}  {x.message_id}")
        for x in skipped:
            print(f"  skipped {x.queue}/{x.redis_id}: undecodable or changed meanwhile")
    if not args.all and not moved:
        raise CliError(f"{args.target} was not requeued: undecodable or changed meanwhile")
    return 0


def _purge(args: argparse.Namespace) -> int:
    settings = get_settings()
    ns = settings.broker_namespace
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("refusing to purge without a terminal to confirm on; pass --yes")
        # Purging all queues at once asks for the namespace: it names what is being wiped.
        expected = args.queue or ns
        what = f"queue {args.queue}" if args.queue else f"every queue of namespace {ns}"
        try:
            answer = input(f"Delete the dead letters of {what}? Type {expected!r} to confirm: ")
        except EOFError:
            answer = ""
        if answer.strip() != expected:
            raise CliError("not confirmed; nothing purged")
    if settings.broker_is_rabbitmq:
        purged = _rabbitmq.dlq_purge(args.queue, settings)
    else:
        with redis_client(settings) as client:
            purged = purge_dead(client, ns, args.queue)
    if args.json:
        print_json({"namespace": ns, "purged": purged})
    else:
        print(f"purged {sum(purged.values())} dead-lettered message(s) in namespace {ns}")
        for queue, count in purged.items():
            print(f"  {queue}  {count}")
    return 0
