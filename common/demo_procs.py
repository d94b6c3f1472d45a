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

from common.demo_services import DemoError

READY_TEXT = "ready for action"
RELAY_READY_TEXT = "relay.started"
# honcho prefixes each line with "HH:MM:SS name.N | "; its own lines are "system | …".
_LINE = re.compile(r"^\S+\s+(?P<name>[\w-]+)\.\d+\s+\|\s?(?P<text>.*)$")
_STARTED = re.compile(r"\bstarted \(pid=(?P<pid>\d+)\)")
# honcho waits this long after SIGTERM before it SIGKILLs its children itself.
HONCHO_KILL_WAIT_S = 5


def procfile_processes(procfile: Path) -> dict[str, str]:
    processes: dict[str, str] = {}
    for line in procfile.read_text().splitlines():
        if line.strip().startswith("#") or ":" not in line:
            continue
        name, command = line.split(":", 1)
        processes[name.strip()] = command.strip()
    return processes


def expected_ready(processes: dict[str, str]) -> dict[str, tuple[str, int]]:
    """What each process logs when it can take work, and how many times.

    dramatiq logs "ready for action" once per worker process (`--processes N`); the relay
    logs `relay.started`. Anything else only has to be running.
    """
    expected: dict[str, tuple[str, int]] = {}
    for name, command in processes.items():
        if "dramatiq" in command.split():
            match = re.search(r"(?:--processes|-p)[ =](\d+)", command)
            expected[name] = (READY_TEXT, int(match.group(1)) if match else 1)
        elif "workers.relay" in command:
            expected[name] = (RELAY_READY_TEXT, 1)
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
            # An empty (or our own) env file: a developer's .env must not redirect the demo.
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
        """Stop everything honcho started; returns the seconds it took."""
        started = time.monotonic()
        children = self.child_pids()
        if self.alive():
            # Only honcho: it SIGTERMs each process group itself. Signalling the workers too
            # would give them a second SIGTERM, which sends dramatiq down its "kill" path.
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _killpg(self.popen.pid)
                self.popen.wait(timeout=5)
        # Leftovers: honcho itself was killed, or a worker outlived its group leader.
        _killpg(self.popen.pid)
        for pid in children:
            _killpg(pid)
        self._handle.close()
        return time.monotonic() - started


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
