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
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
ORPHAN_GRACE_S: Final = 3.0


def _ppid(pid: int) -> int | None:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _threads(pid: int) -> int:
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


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
    failed_starts: Counter[str] = field(default_factory=Counter)  # started again
    # The main process SIGKILLed: its worker processes are orphans that keep consuming (nothing
    # tells them to stop); SIGKILLed as systemd's control-group kill would. Not a violation.
    orphans_killed: Counter[str] = field(default_factory=Counter)


class Stack:
    def __init__(self, env: dict[str, str], logdir: Path, stop_timeout_s: float) -> None:
        self.env = env
        self.logdir = logdir
        self.stop_timeout_s = stop_timeout_s
        self.entries = procfile.read(REPO / "Procfile")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tally = Tally()
        # Held while a kind is killed, stopped or restarted: the faults of different kinds run
        # at once (as they would in production), and revive() leaves a kind being handled alone.
        self.locks = {kind: threading.Lock() for kind in KINDS}

    def log(self, kind: str) -> Path:
        return self.logdir / f"{kind}.log"

    def start(self, kind: str, attempts: int = 3) -> None:
        """Start `kind` and wait until it is ready; a start that fails (PostgreSQL or Redis
        restarting at that moment) is retried, as a supervisor would."""
        for attempt in range(1, attempts + 1):
            try:
                self._start(kind)
                return
            except RuntimeError:
                self._kill_group(kind)
                if attempt == attempts:
                    raise
                self.tally.failed_starts[kind] += 1
                say(f"{kind} did not start (attempt {attempt}): starting it again")
                time.sleep(2)

    def _start(self, kind: str) -> None:
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
        """All at once: each start is mostly imports, waiting on a busy machine's cores."""
        with ThreadPoolExecutor(len(KINDS)) as pool:
            for future in [pool.submit(self.start, kind) for kind in KINDS]:
                future.result()

    def members(self, kind: str) -> list[int]:
        return group_members(self.procs[kind].pid)

    def _wait_gone(self, kind: str, timeout_s: float) -> bool:
        proc = self.procs[kind]
        deadline = time.monotonic() + timeout_s
        while True:  # looked at once at least, whatever the time left
            proc.poll()  # reap the shell once it exits
            if not self.members(kind):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _kill_group(self, kind: str) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.procs[kind].pid, signal.SIGKILL)
        self.procs[kind].wait()
        self._wait_gone(kind, 10)

    def roles(self, kind: str) -> tuple[int | None, list[int]]:
        """(the main process, its worker processes): the shell each line runs in (as honcho
        runs it) leads the group; its child is what the line starts (dramatiq's main process,
        or the relay); that one's children are dramatiq's worker processes."""
        leader = self.procs[kind].pid
        parents = {pid: _ppid(pid) for pid in self.members(kind)}
        main = next((pid for pid, ppid in parents.items() if ppid == leader), None)
        # dramatiq's fork process (the Prometheus exposition server) is a child too, but runs
        # one thread and is not watched by the main process: killing it tests nothing.
        children = [
            pid
            for pid, ppid in parents.items()
            if main is not None and ppid == main and _threads(pid) > 2
        ]
        return main, children

    def kill(self, kind: str, rng: random.Random) -> str:
        """SIGKILL one process (a crash, an OOM kill): a worker process three times in four
        when there are any, else the main one. A dead worker process makes dramatiq's main
        process stop the others and exit: the group has `stop_timeout_s` to be gone, or it is
        SIGKILLed and counted. A dead main process leaves its workers orphaned (they never
        exit): SIGKILLed after a few seconds, as a supervisor would. Restarted either way."""
        with self.locks[kind]:
            main, children = self.roles(kind)
            if children and rng.random() < 0.75:
                victim, what = rng.choice(children), "a worker process"
            else:
                victim, what = main or self.procs[kind].pid, "the main process"
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
            self.tally.kills[kind] += 1
            if victim == main and children:
                if not self._wait_gone(kind, ORPHAN_GRACE_S):
                    self.tally.orphans_killed[kind] += 1
            elif not self._wait_gone(kind, self.stop_timeout_s):
                self.tally.stuck_after_kill[kind] += 1
                say(f"{kind}: still running {self.stop_timeout_s:g} s after SIGKILL of {what}")
            self._kill_group(kind)
            self.start(kind)
            self.tally.restarts[kind] += 1
            return what

    @contextlib.contextmanager
    def down(self, kind: str) -> Iterator[None]:
        """`kind` SIGKILLed whole (a crash of the host's service) for the body, then started
        again: what it held in memory is gone, and what it had fetched stays unacknowledged in
        Redis, waiting for redelivery."""
        with self.locks[kind]:
            self.tally.kills[kind] += 1
            self._kill_group(kind)
            try:
                yield
            finally:
                self.start(kind)
                self.tally.restarts[kind] += 1

    def term(self, kind: str) -> float:
        """SIGTERM to the whole group, as systemd (KillMode=control-group) and honcho stop a
        service; SIGKILL after `stop_timeout_s` (counted). Restarted. Returns the stop time."""
        with self.locks[kind]:
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
        for kind in list(self.procs):
            if not self.locks[kind].acquire(blocking=False):
                continue  # being killed or restarted right now
            try:
                proc = self.procs[kind]
                if proc.poll() is not None:
                    self._kill_group(kind)  # a worker process may outlive its main one
                    self.tally.died_unasked[kind] += 1
                    say(f"{kind} exited on its own ({proc.returncode}): restarting it")
                    self.start(kind)
                    self.tally.restarts[kind] += 1
                    revived.append(kind)
            finally:
                self.locks[kind].release()
        return revived

    def stop_all(self) -> None:
        """SIGTERM to each group, SIGKILL after the timeout (counted as stuck)."""
        for kind in list(self.procs):
            if self.procs[kind].poll() is None or self.members(kind):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.procs[kind].pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s  # one for all: they stop at once
        for kind in list(self.procs):
            if not self._wait_gone(kind, max(0.0, deadline - time.monotonic())):
                self.tally.stuck_after_term[kind] += 1
                say(f"{kind}: still running {self.stop_timeout_s:g} s after the final SIGTERM")
            self._kill_group(kind)

    def kill_all(self) -> None:
        """Cleanup: nothing to save."""
        for kind in list(self.procs):
            self._kill_group(kind)
