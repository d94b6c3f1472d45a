"""The Procfile processes of `contacto-billing demo`, run by honcho: start, readiness, stop."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO

from common.demo.services import DemoError
from common.procfile import Entry

READY_TEXT = "ready for action"
RELAY_READY_TEXT = "relay.started"
WEB_READY_TEXT = "web.ready"  # logged by each web worker once its resources are open
# honcho prefixes each line with "HH:MM:SS name.N | "; its own lines are "system | …".
_LINE = re.compile(r"^\S+\s+(?P<name>[\w-]+)\.\d+\s+\|\s?(?P<text>.*)$")
_STARTED = re.compile(r"\bstarted \(pid=(?P<pid>\d+)\)")
# honcho waits this long after SIGTERM before it SIGKILLs its children itself.
HONCHO_KILL_WAIT_S = 5


def expected_ready(processes: dict[str, Entry]) -> dict[str, tuple[str, int]]:
    """What each process logs when it can take work, and how many times.

    dramatiq logs "ready for action" once per worker process (`--processes N`); the relay
    logs `relay.started`, the web process `web.ready` (one of its workers can serve). Anything
    else only has to be running.
    """
    expected: dict[str, tuple[str, int]] = {}
    for name, entry in processes.items():
        program = entry.program()
        if program == "dramatiq":
            expected[name] = (READY_TEXT, int(entry.option("--processes", "-p") or 1))
        elif program == "workers.relay":
            expected[name] = (RELAY_READY_TEXT, 1)
        elif program == "web":
            expected[name] = (WEB_READY_TEXT, 1)
    return expected


class Honcho:
    """`honcho start` in a session of its own, its output (all processes) in one log file."""

    def __init__(self, procfile: Path, env: dict[str, str], env_file: Path, log: Path) -> None:
        self.procfile = procfile
        self.log = log
        self._handle: IO[bytes] = log.open("wb")
        argv = [
            sys.executable, "-m", "honcho",
            "--no-colour",
            # demo.env, not the default ./.env: a developer's .env must not redirect the demo.
            "-e", str(env_file),
            "-f", str(procfile),
            "-d", str(procfile.parent),
            "start",
        ]  # fmt: skip
        # start_new_session: the terminal's Ctrl-C reaches only the demo, which then stops
        # honcho in order (workers first, servers last) instead of everything at once.
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=procfile.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def child_pids(self) -> list[int]:
        """The Procfile processes honcho started; each leads a process group of its own."""
        return [int(m.group("pid")) for m in _STARTED.finditer(self.output())]

    def wait_ready(self, expected: dict[str, tuple[str, int]], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            seen: Counter[str] = Counter()
            for line in self.output().splitlines():
                match = _LINE.match(line)
                name = match["name"] if match else None
                if match and name in expected and expected[name][0] in match["text"]:
                    seen[match["name"]] += 1
            if all(seen[name] >= count for name, (_text, count) in expected.items()):
                return
            if not self.alive():
                raise DemoError(f"the processes stopped while starting:\n{self.tail()}")
            if time.monotonic() > deadline:
                missing = ", ".join(n for n, (_t, c) in expected.items() if seen[n] < c)
                raise DemoError(f"not ready after {timeout_s:g}s: {missing}\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 25) -> str:
        text = self.output().splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in text) + f"\n    (full log: {self.log})"

    def stop(self, timeout_s: float = 20) -> float:
        """Stop every Procfile process, gracefully; returns the seconds it took.

        As a supervisor does: SIGTERM to each process group (dramatiq's main process and its
        workers alike: a worker takes the second copy for the same request, see
        common/broker/stopping.py), SIGKILL to whatever is left after `timeout_s`. honcho is
        paused meanwhile (its output readers keep running): on the first exit it would signal
        the others again and SIGKILL them after its own 5 s. It resumes once they are gone and
        finds them all stopped.
        """
        started = time.monotonic()
        groups = self.child_pids()
        if self.alive() and groups:
            _signal(self.popen.pid, signal.SIGSTOP)
            try:
                for pgid in groups:
                    _signal_group(pgid, signal.SIGTERM)
                _wait_groups_gone(groups, timeout_s)
                for pgid in groups:  # what did not stop in time
                    _signal_group(pgid, signal.SIGKILL)
            finally:
                _signal(self.popen.pid, signal.SIGCONT)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=HONCHO_KILL_WAIT_S + 5)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        # Leftovers: honcho's own helper processes, or processes started after we looked.
        for pgid in [self.popen.pid, *groups, *self.child_pids()]:
            _signal_group(pgid, signal.SIGKILL)
        self._handle.close()
        return time.monotonic() - started


def _wait_groups_gone(groups: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_group_exists(pgid) for pgid in groups):
            return
        time.sleep(0.05)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
