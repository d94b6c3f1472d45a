"""Prometheus endpoints of a worker and of the relay, scraped for real."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import pytest

from common.broker.factory import build_broker
from common.broker.publish import usage_message
from config.settings import Settings
from tests.support.factories import create_account, event, new_id
from tests.support.localstripe import free_port
from tests.support.procs import dramatiq_worker, relay, running, worker_env
from tests.support.waiting import until

pytestmark = [pytest.mark.slow]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None  # float-ok: a metric, not money


def _enqueue_usage(namespace: str, acct: str) -> None:
    """Two events (one delivered twice) and one rejected: 4 messages."""
    broker = build_broker(Settings(CONTACTO_BROKER_NAMESPACE=namespace))
    ev = event(acct, "1")
    for message in (ev, ev, event(acct, "2"), dict(ev, event_id="bad", amount=3)):
        broker.enqueue(usage_message(message))


async def test_worker_and_relay_metrics(conn: Any, namespace: str, tmp_path: Any) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10")
    worker_port, relay_port = free_port(), free_port()
    env = worker_env(
        namespace, dramatiq_prom_port=str(worker_port), dramatiq_prom_db=str(tmp_path / "prom")
    )
    _enqueue_usage(namespace, acct)
    relay_env = worker_env(namespace, CONTACTO_METRICS_PORT=str(relay_port))
    with running(relay(relay_env)):
        await until(
            lambda: _scrape_async(relay_port),
            lambda t: sample(t, "contacto_outbox_unsent") is not None,
            timeout_s=20,
            what="relay outbox gauges",
        )
        with running(dramatiq_worker("workers.balance", "usage", env, threads=4)):
            text = await until(
                lambda: _scrape_async(worker_port),
                lambda t: sample(t, "contacto_debits_applied_total") == 2,
                timeout_s=20,
                what="debit counters",
            )
    assert sample(text, "contacto_debits_duplicate_total") == 1
    assert sample(text, "contacto_debits_rejected_total") == 1
    assert 'dramatiq_messages_total{actor_name="record_usage",queue_name="usage"} 4.0' in text


# On RabbitMQ the queue gauges are RabbitMQ's own (its Prometheus plugin), not the relay's.
@pytest.mark.redis_only
async def test_relay_queue_gauges(conn: Any, namespace: str) -> None:
    acct = new_id()
    await create_account(conn, acct, balance="10")
    relay_port = free_port()
    _enqueue_usage(namespace, acct)
    relay_env = worker_env(namespace, CONTACTO_METRICS_PORT=str(relay_port))
    with running(relay(relay_env)):
        await until(
            lambda: _scrape_async(relay_port),
            lambda t: 'contacto_queue_messages{queue="usage",state="ready"} 4.0' in t,
            timeout_s=20,
            what="relay queue gauges",
        )


async def _scrape_async(port: int) -> str:
    import asyncio

    try:
        return await asyncio.to_thread(scrape, port)
    except OSError:
        return ""
