"""What the recharge services read from the settings (common/recharge/config.py)."""

from __future__ import annotations

from decimal import Decimal

from common.recharge.config import ChargeLimits
from config.settings import Settings


async def test_limits_object_from_settings() -> None:
    assert ChargeLimits.from_settings(Settings()) == ChargeLimits(Decimal(25), Decimal(10000))
