"""Named points where tests make a real process die by SIGKILL, as a power cut would.

Set `CONTACTO_CRASH_AT=charge.after_gateway` (comma-separated names) in a worker's
environment; with `CONTACTO_CRASH_MARKER=/path`, the process dies only the first time (the
marker file records it), so the restarted process can finish the job. Unset: a dict lookup.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    spec = os.environ.get("CONTACTO_CRASH_AT")
    if not spec or name not in spec.split(","):
        return
    marker = os.environ.get("CONTACTO_CRASH_MARKER")
    if marker:
        path = f"{marker}.{name}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
