"""The `queues` table: ages as an operator reads them, columns that line up."""

from __future__ import annotations

import io
import re

import pytest

from common.cli._render import render_table, show, to_text
from common.cli.queues import format_age


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
    assert to_text(table).splitlines() == [
        "QUEUE         READY",
        "usage             7",
        "a-long-queue   1234",
    ]


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_rows_are_plain_and_never_wrapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What rich would otherwise obey: colour forced on, and an 80-column guess.
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "80")
    long_cell = "x" * 150
    out = _Pipe()
    show(render_table(["ID", "NOTE"], [["[bold]a[/bold]", long_cell]], left=2), file=out)
    assert out.getvalue().splitlines() == [
        "ID" + " " * 14 + "NOTE",
        f"[bold]a[/bold]  {long_cell}",  # markup in data is text
    ]


def test_a_terminal_gets_styles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")  # not "dumb", as CI may say
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = _Terminal()
    show(render_table(["QUEUE", "READY"], [["usage", "7"]]), file=out)
    assert "\x1b[" in out.getvalue()


def test_a_narrow_terminal_loses_no_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "30")
    message_id = "b6245fb1-48d7-4e57-beea-b051879dad3f"
    out = _Terminal()
    show(render_table(["QUEUE", "MESSAGE-ID", "RETRIES"], [["usage", message_id, "5"]]), file=out)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    # One line per row, wider than the terminal: the terminal wraps it, nothing is cut.
    assert plain.splitlines()[1].split() == ["usage", message_id, "5"]
