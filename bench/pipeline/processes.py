"""Starting and stopping the child processes: dramatiq workers, direct children, py-spy.

Each child runs in its own session (process group), so it can be killed with everything it
started (dramatiq forks its worker processes), and every child is remembered so that cleanup
can kill what a failed or interrupted phase left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from bench.pipeline import REPO
from bench.pipeline.console import say


def child_env(
    *, db_url: str, redis_url: str, namespace: str, worker_env: Sequence[str]
) -> dict[str, str]:
    """The environment of a worker: this one, pointed at the bench's database and namespace."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONTACTO_", "dramatiq_prom_"))  # no metrics server either
    }
    # The workers charge nothing: no real payment gateway, whatever this shell has configured.
    for name in ("STRIPE_API_KEY", "STRIPE_API_BASE"):
        env.pop(name, None)
    env.update(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        PAYMENT_GATEWAY="simulated",
        LOG_FORMAT="json",
        CONTACTO_BROKER_NAMESPACE=namespace,
        CONTACTO_EVENTS_STREAM=f"{namespace}:events",
        CONTACTO_SIMULATED_PREFIX=f"{namespace}:simgw",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
    )
    for item in worker_env:  # e.g. CONTACTO_USAGE_MAX_IN_FLIGHT=2
        key, _, value = item.partition("=")
        env[key] = value
    return env


class Processes:
    """The children of one run."""

    def __init__(self) -> None:
        self.started: list[asyncio.subprocess.Process] = []

    async def spawn(
        self, argv: list[str], env: dict[str, str], log: Path, *, pipes: bool = False
    ) -> asyncio.subprocess.Process:
        """Start argv in the repository root, stderr (and stdout unless `pipes`) to `log`.
        With `pipes`, stdin and stdout are pipes: the direct children's control channel."""
        with log.open("ab") as fh:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.PIPE if pipes else None,
                stdout=asyncio.subprocess.PIPE if pipes else fh,
                stderr=fh,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    async def kill_all(self) -> None:
        """SIGKILL to the group of every child still running (cleanup: nothing to save)."""
        for proc in self.started:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 10)


async def stop(proc: asyncio.subprocess.Process, timeout_s: float = 30) -> float:
    """SIGTERM to dramatiq's main process (it forwards it), then reap the group. Returns the
    seconds it took (a slow stop means the workers were slow to drain)."""
    started = time.monotonic()
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            say(f"pid {proc.pid} did not stop in {timeout_s}s: killing it")
    # The group too: a worker process the main one did not take down must not outlive the phase.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    return time.monotonic() - started
