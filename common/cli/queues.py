"""`contacto-billing queues [--json] [--watch [--interval S]]`: what the queues hold, who works."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

import redis
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from common.broker.inspect import live_workers, queue_stats
from common.cli import _rabbitmq
from common.cli._common import print_json
from common.cli._connect import REDIS_ERRORS, redis_client, unreachable
from common.cli._render import console, render_table, show
from config.settings import Settings, get_settings


def register(sub: Any) -> None:
    p = sub.add_parser("queues", help="queue depths, message ages and live workers")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument(
        "--interval", type=_positive_float, default=2.0, help="seconds between refreshes"
    )
    p.set_defaults(func=_queues)


def _positive_float(text: str) -> float:
    try:
        value = float(text)  # float-ok: seconds, not money
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def snapshot(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """The `--json` object; ages in seconds rounded to milliseconds."""
    ns, timeout = settings.broker_namespace, settings.broker_heartbeat_timeout_ms
    now_ms = int(time.time() * 1000)
    stats = queue_stats(client, ns, timeout, now_ms=now_ms)
    workers = live_workers(client, ns, timeout, now_ms=now_ms)
    return {
        "namespace": ns,
        "queues": [
            {
                "queue": s.queue,
                "ready": s.ready,
                "delayed": s.delayed,
                "in_flight": s.in_flight,
                "orphaned": s.orphaned,
                "dead": s.dead,
                "oldest_ready_age_s": (
                    None if s.oldest_ready_age_s is None else round(s.oldest_ready_age_s, 3)
                ),
                "oldest_dead_age_s": (
                    None if s.oldest_dead_age_s is None else round(s.oldest_dead_age_s, 3)
                ),
            }
            for s in stats
        ],
        "dead_letter_warn_after_s": settings.dead_letter_warn_after_s,
        "dead_message_ttl_days": settings.dead_message_ttl_days,
        "workers": [
            {"id": w.id, "last_heartbeat_age_s": round(w.last_heartbeat_age_s, 3)} for w in workers
        ],
    }


def render(snap: dict[str, Any], heartbeat_timeout_ms: int) -> RenderableType:
    workers = snap["workers"]
    clock = datetime.now().strftime("%H:%M:%S")
    head = f"namespace {snap['namespace']}  ·  {len(workers)} live worker(s)  ·  {clock}"
    queue_rows = [
        [
            q["queue"],
            str(q["ready"]),
            str(q["delayed"]),
            str(q["in_flight"]),
            str(q["orphaned"]),
            str(q["dead"]),
            format_age(q["oldest_ready_age_s"]),
        ]
        for q in snap["queues"]
    ]
    queues = render_table(
        ["QUEUE", "READY", "DELAYED", "IN-FLIGHT", "ORPHANED", "DEAD", "OLDEST-READY"], queue_rows
    )
    workers_part: RenderableType
    if workers:
        rows = [[w["id"], format_age(w["last_heartbeat_age_s"])] for w in workers]
        workers_part = render_table(["WORKER", "LAST-BEAT"], rows)
    else:
        workers_part = Text(
            f"no live workers (none beat in the last {heartbeat_timeout_ms / 1000:g}s)"
        )
    parts: list[RenderableType] = [Text(head), Text(""), queues]
    for warning in stale_dead_letters(snap):
        parts.append(Text(warning, style="bold yellow"))
    return Group(*parts, Text(""), workers_part)


def stale_dead_letters(snap: dict[str, Any]) -> list[str]:
    """A warning per queue whose oldest dead letter is older than the warning age: a usage
    message there is a debit not made, a run_recharge a recharge not made, and dramatiq deletes
    them after CONTACTO_DEAD_MESSAGE_TTL_DAYS."""
    warn_after_s = snap["dead_letter_warn_after_s"]
    return [
        f"warning: {q['dead']} dead letter(s) in {q['queue']}, the oldest dead for "
        f"{format_age(q['oldest_dead_age_s'])}: see `contacto-billing dlq list`; dramatiq "
        f"deletes them after {snap['dead_message_ttl_days']:g} days"
        for q in snap["queues"]
        if q["oldest_dead_age_s"] is not None and q["oldest_dead_age_s"] > warn_after_s
    ]


def _queues(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.broker_is_rabbitmq:
        return _rabbitmq.queues(args, settings)
    if not args.watch:
        with redis_client(settings) as client:
            snap = snapshot(client, settings)
        if args.json:
            print_json(snap)
        else:
            show(render(snap, settings.broker_heartbeat_timeout_ms))
        return 0
    try:
        with redis_client(settings) as client:
            if args.json or not sys.stdout.isatty():
                _watch_lines(client, settings, args.interval, as_json=args.json)
            else:
                _watch_screen(client, settings, args.interval)
    except KeyboardInterrupt:
        return 0
    return 0


def _frame(client: redis.Redis, settings: Settings) -> RenderableType:
    # While watching, a Redis outage is shown and retried, the way `top` keeps running.
    try:
        snap = snapshot(client, settings)
    except REDIS_ERRORS as exc:
        return Text(unreachable(settings, exc))
    return render(snap, settings.broker_heartbeat_timeout_ms)


def _watch_screen(client: redis.Redis, settings: Settings, interval_s: float) -> None:
    """A terminal: one screen redrawn in place; the last one stays when Ctrl-C ends it. Unlike
    `show`, lines too long for the terminal are cut at its edge, as `top` does: wrapped, they
    would break the redrawing."""
    with Live(console=console(), auto_refresh=False) as live:
        while True:
            live.update(_frame(client, settings), refresh=True)
            time.sleep(interval_s)


def _watch_lines(
    client: redis.Redis, settings: Settings, interval_s: float, *, as_json: bool
) -> None:
    """Not a terminal: every refresh appended, as plain text or one JSON object per line."""
    while True:
        if as_json:
            _print_json_frame(client, settings)
        else:
            show(_frame(client, settings), Text(""))
        time.sleep(interval_s)


def _print_json_frame(client: redis.Redis, settings: Settings) -> None:
    try:
        snap = snapshot(client, settings)
    except REDIS_ERRORS as exc:
        print(json.dumps({"error": unreachable(settings, exc)}), flush=True)
        return
    # One compact object per line, so the stream can be piped into jq or a log.
    print(json.dumps(snap), flush=True)
