"""What the recharge services read from the settings, as small frozen values built once per
process: the policy's timing and run cap, and the limits a charge must respect."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from config.settings import Settings


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    retry_min_interval: timedelta
    run_max_charges: int

    @classmethod
    def from_settings(cls, settings: Settings) -> PolicyConfig:
        return cls(
            retry_min_interval=timedelta(seconds=settings.retry_min_interval_s),
            run_max_charges=settings.run_max_charges,
        )


@dataclass(frozen=True, slots=True)
class ChargeLimits:
    minimum: Decimal
    global_max: Decimal

    @classmethod
    def from_settings(cls, settings: Settings) -> ChargeLimits:
        return cls(settings.min_recharge_amount, settings.max_recharge_amount)
