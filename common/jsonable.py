"""Domain values as JSON: amounts as decimal strings (`format_amount`), times as ISO 8601.

One function for every surface that shows state (`--json` of the CLI, the account API), so an
amount reads the same wherever it is printed.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from common.money import format_amount


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format_amount(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value
