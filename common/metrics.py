"""Prometheus metrics of our own (dramatiq's Prometheus middleware adds its per-actor ones).

prometheus_client is imported on first use, not at module import: in dramatiq worker processes
the Prometheus middleware sets PROMETHEUS_MULTIPROC_DIR at process boot, and prometheus_client
chooses its value storage when it is first imported. Importing it earlier, in the parent before
the fork, would make every worker's counters invisible to the exposition server.
"""

from __future__ import annotations

from typing import Any

_metrics: Metrics | None = None

TRANSACTION_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    def __init__(self) -> None:
        import prometheus_client as prom

        self.debits_applied = prom.Counter(
            "contacto_debits_applied_total", "Usage events debited (once per event id)."
        )
        self.debits_duplicate = prom.Counter(
            "contacto_debits_duplicate_total", "Usage deliveries ignored: event id already seen."
        )
        self.debits_rejected = prom.Counter(
            "contacto_debits_rejected_total", "Usage events kept in rejected_usage with a reason."
        )
        self.usage_transaction_messages = prom.Histogram(
            "contacto_usage_transaction_messages",
            "Usage messages committed per group-commit transaction.",
            buckets=TRANSACTION_BUCKETS,
        )
        self.charges = prom.Counter(
            "contacto_charges_total", "Gateway charges recorded, by status.", ["status"]
        )
        self.recharges = prom.Counter(
            "contacto_recharges_total",
            "Recharge outcomes: succeeded (a charge credited), failed (an attempt failed), "
            "capped (a run stopped at its safety cap).",
            ["outcome"],
        )
        self.gateway_errors = prom.Counter(
            "contacto_gateway_errors_total",
            "Gateway calls that raised: transient (retried, same key) or config (ours).",
            ["kind"],
        )
        self.accounts_suspended = prom.Counter(
            "contacto_accounts_suspended_total", "Accounts suspended after the 0 % attempt."
        )
        self.reconcile_republished = prom.Counter(
            "contacto_reconcile_republished_total",
            "Messages of unfinished work that the broker had lost, re-published by the "
            "reconciler, by actor (run_recharge, record_failure, recheck_tier).",
            ["kind"],
        )
        # Gauges below are set by the relay process only (it is not a dramatiq worker).
        self.outbox_unsent = prom.Gauge(
            "contacto_outbox_unsent",
            "Outbox rows committed but not yet published.",
            multiprocess_mode="max",
        )
        self.outbox_lag_seconds = prom.Gauge(
            "contacto_outbox_lag_seconds",
            "Age of the oldest unpublished outbox row.",
            multiprocess_mode="max",
        )
        self.queue_messages = prom.Gauge(
            "contacto_queue_messages",
            "Messages per queue and state (ready, delayed, in_flight, dead).",
            ["queue", "state"],
            multiprocess_mode="max",
        )
        self.queue_oldest_seconds = prom.Gauge(
            "contacto_queue_oldest_message_seconds",
            "Age of the oldest ready message per queue.",
            ["queue"],
            multiprocess_mode="max",
        )


def metrics() -> Metrics:
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


def serve(port: int) -> Any:
    """Expose the default registry on `port` (for processes that are not dramatiq workers)."""
    import prometheus_client as prom

    return prom.start_http_server(port, addr="0.0.0.0")  # like dramatiq_prom_host
