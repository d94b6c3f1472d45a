"""The `queues` table: ages as an operator reads them, columns that line up."""

from __future__ import annotations

import pytest

from common.cli.queues import format_age, render_table


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.04, "0.0s"),
        (59.94, "59.9s"),
        (60, "1m00s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (86399, "23h59m"),
        (90061, "1d01h"),
    ],
)
def test_format_age(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_render_table_aligns_text_left_and_numbers_right() -> None:
    table = render_table(["QUEUE", "READY"], [["usage", "7"], ["a-long-queue", "1234"]])
    assert table.splitlines() == [
        "QUEUE         READY",
        "usage             7",
        "a-long-queue   1234",
    ]
