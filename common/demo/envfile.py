"""demo.env: the demo's environment, and whether the demo that wrote it still runs.

`contacto-billing demo` writes it under its state directory (.contacto/) for honcho (`-e`) and
for a second terminal (`set -a; . .contacto/demo.env; set +a`). Its values are only good while
that demo runs: the demo database is reset by the next one, and embedded servers stop with it.
So the file names its demo (a header, and CONTACTO_DEMO_PID, which travels with the values):
a clean stop rewrites the header to say STALE, and `contacto-billing`, run with these values
after the demo is gone (killed too, when no stop could mark the file), warns.

Only the standard library: the CLI imports this on every command.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

PID_VARIABLE = "CONTACTO_DEMO_PID"
STARTED_VARIABLE = "CONTACTO_DEMO_STARTED"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write(path: Path, variables: Mapping[str, str], pid: int, started: str) -> dict[str, str]:
    """Write demo.env; returns what it holds: `variables`, after the demo's pid and start."""
    header = (
        f"# Written by `contacto-billing demo` (pid {pid}, started {started}), for its\n"
        "# processes and for a second terminal:  set -a; . <this file>; set +a\n"
        "# Good while that demo runs; a clean stop marks this file STALE, and contacto-billing\n"
        f"# warns when run with these values after the demo is gone ({PID_VARIABLE}).\n"
    )
    body = {PID_VARIABLE: str(pid), STARTED_VARIABLE: started, **variables}
    path.write_text(header + "".join(f"{k}={v}\n" for k, v in body.items()))
    return body


def mark_stale(path: Path, pid: int) -> bool:
    """Rewrite the header of the demo.env that demo `pid` wrote: STALE, since when, why.

    The values stay (someone may still want to read them); False when the file is not there
    or was written by another demo."""
    try:
        lines = path.read_text().splitlines(keepends=True)
    except OSError:
        return False
    values = [line for line in lines if not line.startswith("#")]
    if f"{PID_VARIABLE}={pid}\n" not in values:
        return False
    started = next(
        (v.split("=", 1)[1].strip() for v in values if v.startswith(f"{STARTED_VARIABLE}=")), "?"
    )
    header = (
        f"# STALE: the demo that wrote this file (pid {pid}, started {started}) stopped at\n"
        f"# {now()}. Its demo database is reset by the next demo and embedded servers are\n"
        "# stopped: these values no longer point at a running demo. `make demo` writes anew.\n"
    )
    path.write_text(header + "".join(values))
    return True


def demo_running(pid: int) -> bool:
    """Is `pid` alive and, where /proc tells, a `contacto-billing demo` (pids are reused)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    with contextlib.suppress(OSError):
        return b"demo" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return True


def stale_warning(environ: Mapping[str, str]) -> str | None:
    """A warning when this environment came from a demo.env whose demo no longer runs."""
    text = environ.get(PID_VARIABLE)
    if not text:
        return None
    try:
        pid = int(text)
    except ValueError:
        return None
    if pid == os.getpid() or demo_running(pid):
        return None
    started = environ.get(STARTED_VARIABLE, "?")
    return (
        f"this environment comes from a demo.env of a demo that is no longer running "
        f"({PID_VARIABLE}={pid}, started {started}): DATABASE_URL and REDIS_URL may point at "
        "a reset database or stopped servers. Start `make demo` again, or unset its variables."
    )
