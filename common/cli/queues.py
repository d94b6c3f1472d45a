"""`contacto-billing queues [--json] [--watch [--interval S]]`: what the queues hold, who works.

Also home of the helpers `dlq` shares: the Redis client for one command and table rendering.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import redis

from common.broker.inspect import live_workers, queue_stats
from common.cli._common import CliError, print_json
from config.settings import Settings, get_settings

CLEAR_SCREEN = "\033[H\033[2J"


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


def _where(url: str) -> str:
    """Where Redis is, without the password a URL may carry."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


def unreachable(settings: Settings, exc: Exception) -> str:
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return f"cannot reach Redis at {_where(settings.redis_url)}: {reason}"


@contextmanager
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    """A client for one command; an unreachable Redis becomes a one-line CliError."""
    # Short timeouts: an operator's command should fail fast rather than hang on a dead host.
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10)
    try:
        yield client
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise CliError(unreachable(settings, exc)) from None
    finally:
        client.close()


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


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to their widest cell; the first `left` columns align left, the rest right."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


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
            }
            for s in stats
        ],
        "workers": [
            {"id": w.id, "last_heartbeat_age_s": round(w.last_heartbeat_age_s, 3)} for w in workers
        ],
    }


def render(snap: dict[str, Any], heartbeat_timeout_ms: int) -> str:
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
    if workers:
        rows = [[w["id"], format_age(w["last_heartbeat_age_s"])] for w in workers]
        workers_text = render_table(["WORKER", "LAST-BEAT"], rows)
    else:
        workers_text = f"no live workers (none beat in the last {heartbeat_timeout_ms / 1000:g}s)"
    return f"{head}\n\n{queues}\n\n{workers_text}\n"


def _queues(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not args.watch:
        with redis_client(settings) as client:
            snap = snapshot(client, settings)
        if args.json:
            print_json(snap)
        else:
            sys.stdout.write(render(snap, settings.broker_heartbeat_timeout_ms))
        return 0
    try:
        with redis_client(settings) as client:
            while True:
                _refresh(client, settings, as_json=args.json)
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _refresh(client: redis.Redis, settings: Settings, *, as_json: bool) -> None:
    # While watching, a Redis outage is shown and retried, the way `top` keeps running.
    try:
        snap = snapshot(client, settings)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        reason = unreachable(settings, exc)
        print(json.dumps({"error": reason}) if as_json else CLEAR_SCREEN + reason, flush=True)
        return
    if as_json:
        # One compact object per line, so the stream can be piped into jq or a log.
        print(json.dumps(snap), flush=True)
    else:
        sys.stdout.write(CLEAR_SCREEN + render(snap, settings.broker_heartbeat_timeout_ms))
        sys.stdout.flush()
