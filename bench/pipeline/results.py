"""What a phase measured, and its verdict against the targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.pipeline.phases import Phase

# The targets the pipeline is held to (docs/performance.md): single-event messages at >= 70 %
# of what the async no-op actor does in the same run, batches of 100 at >= 25,000 events/s.
SINGLE_RATIO_TARGET = 0.70
BATCH_RATE_TARGET = 25_000.0


@dataclass
class Result:
    phase: str
    kind: str
    what: str
    events: int  # events counted in the measured window
    messages: int
    seconds: float
    rate: float
    method: str
    ratio_to_noop: float | None = None
    target: str = ""
    passed: bool | None = None
    correct: bool | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    txns: dict[str, Any] = field(default_factory=dict)
    cpu_cores: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_us_per_event(self) -> dict[str, float]:
        """CPU microseconds per event by side: steadier than rates when the machine is shared."""
        c, rate = self.cpu_cores, max(self.rate, 1e-9)
        python = c.get("workers", 0.0) + c.get("dramatiq_main", 0.0)
        postgres = c.get("pg_backends", 0.0) + c.get("pg_other", 0.0)
        redis = c.get("redis", 0.0)
        return {
            "python": round(python / rate * 1e6, 1),
            "postgres": round(postgres / rate * 1e6, 1),
            "redis": round(redis / rate * 1e6, 1),
            "total": round((python + postgres + redis) / rate * 1e6, 1),
        }


def judge(result: Result, phase: Phase, noop_rate: float | None) -> None:
    """Fill in the ratio to noop-async (single-event worker phases that write) and the target."""
    if noop_rate and phase.kind == "worker" and phase.batch == 1 and phase.accounts:
        result.ratio_to_noop = round(result.rate / noop_rate, 3)
    if phase.target == "ratio":
        result.target = f">= {SINGLE_RATIO_TARGET:.0%} of noop-async"
        result.passed = (
            result.ratio_to_noop is not None and result.ratio_to_noop >= SINGLE_RATIO_TARGET
        )
    elif phase.target == "rate":
        result.target = f">= {BATCH_RATE_TARGET:,.0f} events/s"
        result.passed = result.rate >= BATCH_RATE_TARGET
