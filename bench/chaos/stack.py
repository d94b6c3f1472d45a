"""The pipeline as deployed: the Procfile's balance, charge, retry and relay lines, each run as
honcho runs it (`/bin/sh -c LINE` in the repository, a process group of its own), and the ways
the run hurts them: SIGKILL to one process, SIGTERM to the group, and a restart after each.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.pipeline import REPO
from bench.pipeline.console import say
from common import procfile

KINDS: Final = ("balance", "charge", "retry", "relay")
# What each kind logs once per process when it is ready: dramatiq's own line, once per worker
# process (the balance line runs two), and the relay's.
_READY: Final = {"relay": "relay.started"}
_DRAMATIQ_READY: Final = "Worker process is ready for action"
START_TIMEOUT_S: Final = 120.0  # two cores shared by four people: imports can take a while


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command's ")": state, ppid, pgrp, …
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


@dataclass
class Tally:
    """What was done to the processes, and how they took it (the table's first half)."""

    kills: Counter[str] = field(default_factory=Counter)
    terms: Counter[str] = field(default_factory=Counter)
    # Groups still alive `stop_timeout_s` after a SIGTERM to the group (issue 12, fault 1):
    # SIGKILLed, and a violation.
    stuck_after_term: Counter[str] = field(default_factory=Counter)
    # Groups whose main process outlived a SIGKILLed worker process by `stop_timeout_s`.
    stuck_after_kill: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)
    term_stop_s: dict[str, float] = field(default_factory=dict)
    died_unasked: Counter[str] = field(default_factory=Counter)  # found dead, restarted


class Stack:
    def __init__(self, env: dict[str, str], logdir: Path, stop_timeout_s: float) -> None:
        self.env = env
        self.logdir = logdir
        self.stop_timeout_s = stop_timeout_s
        self.entries = procfile.read(REPO / "Procfile")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tally = Tally()

    def log(self, kind: str) -> Path:
        return self.logdir / f"{kind}.log"

    def start(self, kind: str) -> None:
        entry = self.entries[kind]
        log = self.log(kind)
        offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as fh:
            self.procs[kind] = subprocess.Popen(
                ["/bin/sh", "-c", entry.command], cwd=REPO, env=self.env, stdout=fh,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        text, count = _READY.get(kind, _DRAMATIQ_READY), int(entry.option("--processes") or 1)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with log.open("rb") as fh:
                fh.seek(offset)
                if fh.read().decode(errors="replace").count(text) >= count:
                    return
            if self.procs[kind].poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{kind} did not start:\n{tail}")
            time.sleep(0.1)

    def start_all(self) -> None:
        for kind in KINDS:
            self.start(kind)

    def members(self, kind: str) -> list[int]:
        return group_members(self.procs[kind].pid)

    def _wait_gone(self, kind: str, timeout_s: float) -> bool:
        proc = self.procs[kind]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the shell once it exits
            if not self.members(kind):
                return True
            time.sleep(0.05)
        return False

    def _kill_group(self, kind: str) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.procs[kind].pid, signal.SIGKILL)
        self.procs[kind].wait()
        self._wait_gone(kind, 10)

    def kill(self, kind: str, rng: random.Random) -> str:
        """SIGKILL one random process of the group (a dramatiq worker process, its main process,
        the shell, or the relay): a crash, an OOM kill. The rest of the group is given
        `stop_timeout_s` to notice and exit (dramatiq's main process stops the others when one
        dies), then SIGKILLed and counted. Restarted either way."""
        members = self.members(kind)
        victim = rng.choice(members) if members else self.procs[kind].pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        self.tally.kills[kind] += 1
        what = "main" if victim == self.procs[kind].pid else f"pid {victim}"
        if not self._wait_gone(kind, self.stop_timeout_s):
            self.tally.stuck_after_kill[kind] += 1
            say(f"{kind}: still running {self.stop_timeout_s:g} s after SIGKILL of {what}")
        self._kill_group(kind)
        self.start(kind)
        self.tally.restarts[kind] += 1
        return what

    def term(self, kind: str) -> float:
        """SIGTERM to the whole group, as systemd (KillMode=control-group) and honcho stop a
        service; SIGKILL after `stop_timeout_s` (counted). Restarted. Returns the stop time."""
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[kind].pid, signal.SIGTERM)
        self.tally.terms[kind] += 1
        stopped = self._wait_gone(kind, self.stop_timeout_s)
        took = time.monotonic() - started
        if not stopped:
            self.tally.stuck_after_term[kind] += 1
            say(f"{kind}: still running {self.stop_timeout_s:g} s after SIGTERM: SIGKILL")
        self._kill_group(kind)
        self.tally.term_stop_s[kind] = round(took, 1)
        self.start(kind)
        self.tally.restarts[kind] += 1
        return took

    def revive(self) -> list[str]:
        """Restart whatever died without being asked to (a worker that crashed on a database
        restart, say); a deployment's supervisor would. Returns the kinds restarted."""
        revived = []
        for kind, proc in self.procs.items():
            if proc.poll() is not None:
                self._kill_group(kind)  # a worker process may outlive its main one
                self.tally.died_unasked[kind] += 1
                say(f"{kind} exited on its own ({proc.returncode}): restarting it")
                self.start(kind)
                self.tally.restarts[kind] += 1
                revived.append(kind)
        return revived

    def stop_all(self) -> None:
        """SIGTERM to each group, SIGKILL after the timeout (counted as stuck)."""
        for kind in list(self.procs):
            if self.procs[kind].poll() is None or self.members(kind):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.procs[kind].pid, signal.SIGTERM)
        for kind in list(self.procs):
            if not self._wait_gone(kind, self.stop_timeout_s):
                self.tally.stuck_after_term[kind] += 1
                say(f"{kind}: still running {self.stop_timeout_s:g} s after the final SIGTERM")
            self._kill_group(kind)

    def kill_all(self) -> None:
        """Cleanup: nothing to save."""
        for kind in list(self.procs):
            self._kill_group(kind)
