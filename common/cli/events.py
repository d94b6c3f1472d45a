"""`contacto-billing events tail`: the domain events on the Redis Stream."""

from __future__ import annotations

import argparse
import json
from typing import Any

import redis

from common.cli._connect import redis_errors
from config.settings import get_settings


def register(sub: Any) -> None:
    events = sub.add_parser("events", help="domain events (Redis Stream)")
    ev = events.add_subparsers(dest="events_cmd", required=True, metavar="ACTION")
    p = ev.add_parser("tail", help="show the latest events; --follow to keep reading")
    p.add_argument("-n", "--count", type=int, default=20)
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--account", help="only this account's events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_tail)


def decode_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    data = json.loads(fields.get(b"data", b"{}"))
    return {
        "id": entry_id.decode(),
        "type": fields.get(b"type", b"").decode(),
        "outbox_id": int(fields.get(b"outbox_id", b"0")),
        "created_at": fields.get(b"created_at", b"").decode(),
        "data": data,
    }


def render(event: dict[str, Any]) -> str:
    data = dict(event["data"])
    account = data.pop("account_id", "-")
    details = " ".join(f"{k}={v}" for k, v in data.items() if v is not None)
    return f"{event['created_at'][:19]}  {event['type']:<20} {account:<18} {details}"


def _tail(args: argparse.Namespace) -> int:
    settings = get_settings()
    client: Any = redis.Redis.from_url(settings.redis_url)
    try:
        with redis_errors(settings):
            _read(client, settings.events_stream, args)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
    return 0


def _read(client: Any, stream: str, args: argparse.Namespace) -> None:
    entries = client.xrevrange(stream, count=args.count)
    last_id = entries[0][0] if entries else b"$"
    for entry_id, fields in reversed(entries):
        _show(decode_entry(entry_id, fields), args)
    while args.follow:
        batch = client.xread({stream: last_id}, block=1000, count=100)
        for _stream, items in batch or []:
            for entry_id, fields in items:
                last_id = entry_id
                _show(decode_entry(entry_id, fields), args)


def _show(event: dict[str, Any], args: argparse.Namespace) -> None:
    if args.account and event["data"].get("account_id") != args.account:
        return
    if args.json:
        print(json.dumps(event), flush=True)
    else:
        print(render(event), flush=True)
