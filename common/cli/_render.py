"""Human-readable output through rich: styled on a terminal, plain text everywhere else.

Tests, pipes and log files get what a script can read: no ANSI codes (whatever FORCE_COLOR
says), and no wrapping at an assumed 80 columns in the middle of a row.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.measure import Measurement
from rich.segment import Segment, Segments
from rich.table import Table
from rich.text import Text

# Wide enough that no row of ours is ever wrapped when there is no terminal to fit.
PLAIN_WIDTH = 10_000


def console(file: TextIO | None = None) -> Console:
    """A console for `file` (default: the current sys.stdout, which tests replace)."""
    out = file if file is not None else sys.stdout
    tty = out.isatty()
    return Console(
        file=out,
        force_terminal=tty,
        color_system="auto" if tty else None,
        width=None if tty else PLAIN_WIDTH,
        # Cells hold data (kwargs, error messages): "[…]" in them is text, not rich markup.
        markup=False,
        emoji=False,
        highlight=False,
    )


def err_console() -> Console:
    return console(sys.stderr)


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str | Text]],
    left: int = 1,
    *,
    wrap: bool = False,
) -> Table:
    """Columns two spaces apart, no borders; the first `left` columns align left, the rest
    right (numbers). A row is one line: a terminal too narrow for it gets it soft-wrapped
    (see `fitted`); with `wrap`, the last column (prose) wraps within the table instead."""
    # A str is data, shown as is; a Text may carry a style (shown on a terminal only).
    cells = [[Text(c) if isinstance(c, str) else c for c in row] for row in rows]
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold", show_edge=False)
    last = len(headers) - 1
    for i, header in enumerate(headers):
        justify: JustifyMethod = "left" if i < left else "right"
        wraps = wrap and i == last
        # The width a cell needs as a minimum: what `fitted` measures to widen a console.
        widest = max([len(header), *(row[i].cell_len for row in cells)])
        table.add_column(
            header, justify=justify, no_wrap=not wraps, min_width=None if wraps else widest
        )
    for row in cells:
        table.add_row(*row)
    return table


def to_text(renderable: RenderableType) -> str:
    """The plain text a non-terminal gets, without the padding rich leaves at line ends."""
    plain = Console(
        width=PLAIN_WIDTH,
        force_terminal=False,
        color_system=None,
        markup=False,
        emoji=False,
        highlight=False,
    )
    with plain.capture() as captured:
        plain.print(renderable)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def fitted(renderable: RenderableType, file: TextIO | None = None) -> Console:
    """A console for `file`, widened if a terminal is too narrow for `renderable`.

    Fitting a table into too few columns, rich would cut its rows at the terminal's edge; a
    terminal soft-wrapping the lines, as it did plain text, loses nothing.
    """
    out = console(file)
    if out.is_terminal:
        unbounded = out.options.update_width(PLAIN_WIDTH)
        out.width = max(out.width, Measurement.get(out, unbounded, renderable).minimum)
    return out


def show(*renderables: RenderableType, file: TextIO | None = None) -> None:
    """Print renderables one below the other: styled on a terminal, else as plain text."""
    out = file if file is not None else sys.stdout
    # One Group: print(a, b) would join texts with a space and wrap them as one.
    group = Group(*renderables)
    if out.isatty():
        # No cropping: lines pre-rendered wider than the terminal (table_lines) wrap instead.
        fitted(group, out).print(group, crop=False)
    else:
        out.write(to_text(group) + "\n")
        out.flush()


def table_lines(table: Table) -> list[RenderableType]:
    """The table line by line, header first, so that details can go between rows (the
    columns never wrap, so each row is exactly one line)."""
    out = fitted(table)
    lines = out.render_lines(table, out.options, pad=False)
    return [Segments([*line, Segment.line()]) for line in lines]
