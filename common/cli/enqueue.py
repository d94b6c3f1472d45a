"""`contacto-billing enqueue usage`: test jobs on queue `usage`, as the upstream would send."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from rich import progress

from common.accounts.store import account_currency
from common.broker.factory import build_broker
from common.broker.publish import chunked, usage_batch_message, usage_message
from common.cli._common import CliError, SetupError, amount_arg, print_json, run
from common.cli._connect import redis_errors, with_conn
from common.cli._render import err_console
from common.names import ACTOR_RECORD_USAGE, ACTOR_RECORD_USAGE_BATCH, QUEUE_USAGE
from config.settings import get_settings


def register(sub: Any) -> None:
    enqueue = sub.add_parser("enqueue", help="send test jobs")
    en = enqueue.add_subparsers(dest="enqueue_cmd", required=True, metavar="KIND")
    p = en.add_parser("usage", help="send usage events to queue usage")
    p.add_argument("account", nargs="?", help="account to debit (not needed with --file)")
    p.add_argument("--amount", type=amount_arg, help="amount of each event (decimal string)")
    p.add_argument("--count", type=int, default=1, help="how many events (default 1)")
    p.add_argument("--event-id", help="event id (with --count: a prefix, -1, -2, … appended)")
    p.add_argument("--currency", help="default: the account's currency")
    p.add_argument("--kind", default="voice")
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="send record_usage_batch messages of this many events (1-1000)",
    )
    p.add_argument(
        "--file",
        type=argparse.FileType("r"),
        help="JSON lines, one event object per line ('-' for stdin), sent verbatim",
    )
    p.add_argument("--json", action="store_true", help="print what was sent as JSON")
    p.set_defaults(func=_usage)


def _events(args: argparse.Namespace, currency: str) -> Iterator[dict[str, Any]]:
    prefix = args.event_id or f"cli-{uuid.uuid4().hex[:12]}"
    for i in range(1, args.count + 1):
        event_id = args.event_id if args.count == 1 and args.event_id else f"{prefix}-{i}"
        yield {
            "event_id": event_id,
            "account_id": args.account,
            "amount": str(args.amount),
            "currency": currency,
            "occurred_at": datetime.now(UTC).isoformat(),
            "kind": args.kind,
        }


def _file_events(handle: TextIO) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            # Sent verbatim: a JSON number stays a number, and the worker rejects it.
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CliError(f"line {number} is not JSON: {exc.msg}") from None
        if not isinstance(event, dict):
            raise CliError(f"line {number} is not a JSON object")
        yield event


def _usage(args: argparse.Namespace) -> int:
    if args.file is None:
        if not args.account or args.amount is None:
            raise CliError("give ACCOUNT and --amount, or --file")
        if args.count < 1:
            raise CliError("--count must be at least 1")
        currency = args.currency or _lookup_currency(args.account)
        events: Iterator[dict[str, Any]] = _events(args, currency)
        total: int | None = args.count
    else:
        events, total = _file_events(args.file), None
    if args.batch_size and not 1 <= args.batch_size <= 1000:
        raise CliError("--batch-size must be between 1 and 1000")
    if args.rate is not None and args.rate <= 0:
        raise CliError("--rate must be positive")

    settings = get_settings()
    broker = build_broker(settings)
    sent_events: list[str] = []
    messages = 0
    started = time.monotonic()
    groups = chunked(events, args.batch_size) if args.batch_size else ([e] for e in events)
    with redis_errors(settings), Progress(total, enabled=(total or 2) > 1 and not args.json) as bar:
        for group in groups:
            if args.rate:
                # Pace against the start, not the previous send, so rounding never accumulates.
                due = started + len(sent_events) / args.rate
                time.sleep(max(0.0, due - time.monotonic()))
            message = usage_batch_message(group) if args.batch_size else usage_message(group[0])
            broker.enqueue(message)
            messages += 1
            sent_events.extend(str(e.get("event_id")) for e in group)
            bar.update(len(sent_events))
    elapsed = time.monotonic() - started
    actor = ACTOR_RECORD_USAGE_BATCH if args.batch_size else ACTOR_RECORD_USAGE
    summary = {
        "queue": QUEUE_USAGE,
        "actor": actor,
        "messages": messages,
        "events": len(sent_events),
        "first_event_id": sent_events[0] if sent_events else None,
        "last_event_id": sent_events[-1] if sent_events else None,
        "seconds": round(elapsed, 3),
    }
    if args.json:
        print_json(summary)
    else:
        span = (
            f"{summary['first_event_id']} … {summary['last_event_id']}"
            if len(sent_events) > 1
            else summary["first_event_id"]
        )
        print(
            f"sent {len(sent_events)} event(s) in {messages} {actor} message(s) to queue "
            f"{QUEUE_USAGE}: {span}"
        )
    return 0


def _lookup_currency(account: str) -> str:
    try:
        currency = run(with_conn(lambda conn: account_currency(conn, account)))
    except SetupError as exc:
        # Test jobs need no database: without one the currency is a guess, said as such.
        print(f"warning: {exc}; sending USD", file=sys.stderr)
        return "USD"
    if currency is None:
        print(
            f"warning: account {account!r} not found; sending USD (the worker will reject "
            "unknown accounts)",
            file=sys.stderr,
        )
        return "USD"
    return currency


class Progress:
    """A progress bar on stderr, only on a terminal: logs and pipes get no redraws."""

    def __init__(self, total: int | None, *, enabled: bool) -> None:
        self._bar: progress.Progress | None = None
        if not (enabled and sys.stderr.isatty()):
            return
        self._bar = progress.Progress(
            progress.SpinnerColumn() if total is None else progress.BarColumn(),
            progress.MofNCompleteColumn() if total else progress.TextColumn("{task.completed}"),
            progress.TextColumn("events  {task.fields[rate]} events/s"),
            progress.TimeElapsedColumn(),
            console=err_console(),
        )
        self._task = self._bar.add_task("sending", total=total, rate="-")
        self._started = time.monotonic()

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def update(self, done: int) -> None:
        if self._bar is None:
            return
        rate = done / max(time.monotonic() - self._started, 1e-9)
        self._bar.update(self._task, completed=done, rate=f"{rate:,.0f}")

    def __exit__(self, *_exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
