"""Progress lines on stderr, and the end of a child's log when it failed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

# Progress lines carry the seconds since the benchmark started, so a slow step stands out.
_t0 = time.monotonic()


def say(text: str) -> None:
    # stderr: stdout carries the table, or the JSON with `--json` alone.
    print(f"[{time.monotonic() - _t0:6.1f}s] {text}", file=sys.stderr, flush=True)


def log_tail(log: Path, chars: int = 3000) -> str:
    """The end of a child's log, for the error raised when it died (the log is deleted)."""
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
