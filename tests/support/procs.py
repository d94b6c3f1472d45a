"""Real worker processes for the tests: started, watched, killed.

Each process logs to a file in the session's scratch directory (removed when the session ends);
a test that fails waiting for a process shows the end of that log in its assertion message.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from common import procfile
from tests.support.session import scratch_dir

REPO = Path(__file__).resolve().parents[2]


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        logs = scratch_dir() / "logs"
        logs.mkdir(exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=logs)
        self.log = Path(path)
        self._log_handle = os.fdopen(fd, "wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() reaches the forked workers
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, count: int = 1, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.output().count(text) >= count:
                return
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.popen.returncode}):\n{self.output()[-3000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name}: no {text!r} x{count} in {timeout_s}s:\n{self.output()[-3000:]}"
        )

    def wait_exit(self, timeout_s: float = 30) -> int:
        return self.popen.wait(timeout=timeout_s)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group, like a power cut."""
        self._signal_group(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout_s: float = 20) -> None:
        """Stop as a supervisor does: SIGTERM to the whole process group (dramatiq's main
        process and its workers alike), SIGKILL to whatever is left after `timeout_s`."""
        self.stop_group(timeout_s)
        self._signal_group(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._log_handle.close()

    def stop_group(self, timeout_s: float = 20) -> float:
        """SIGTERM to the group; the seconds until no process of it is left (or timeout_s)."""
        return self._stop_by(lambda: self._signal_group(signal.SIGTERM), timeout_s)

    def stop_main(self, timeout_s: float = 20) -> float:
        """SIGTERM to the main process only (dramatiq's main process forwards it to its
        workers); the seconds until no process of the group is left (or timeout_s)."""
        main = self.main_pid()
        return self._stop_by(lambda: os.kill(main, signal.SIGTERM), timeout_s)

    def main_pid(self) -> int:
        """The program's top process: the leader, or its child when the leader is the
        `/bin/sh -c` that runs a Procfile line (dash does not exec the command)."""
        members = group_members(self.popen.pid)
        programs = [pid for pid in members if _argv(pid)[:1] != ["/bin/sh"]]
        parents = {pid: _ppid(pid) for pid in programs}
        tops = [pid for pid in programs if parents[pid] not in parents]
        assert len(tops) == 1, f"{self.name}: no single main process in {members}"
        return tops[0]

    def _stop_by(self, send: Callable[[], None], timeout_s: float) -> float:
        started = time.monotonic()
        # The group, not the leader: a Procfile line's /bin/sh dies at once, its program not.
        if group_members(self.popen.pid):
            send()
        while time.monotonic() - started < timeout_s:
            self.popen.poll()  # reap the group leader once it exits
            if not group_members(self.popen.pid):
                break
            time.sleep(0.05)
        return time.monotonic() - started

    def signal_group(self, sig: signal.Signals) -> None:
        self._signal_group(sig)

    def _signal_group(self, sig: signal.Signals) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


def worker_env(namespace: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CONTACTO_BROKER_NAMESPACE": namespace,
            # Redeliver a dead worker's messages after 3 s instead of 60 s, and check often.
            "CONTACTO_BROKER_HEARTBEAT_TIMEOUT_MS": "3000",
            "CONTACTO_BROKER_MAINTENANCE_CHANCE": "200000",
            "CONTACTO_RETRIES_MIN_BACKOFF_MS": "100",
            "CONTACTO_RETRIES_MAX_BACKOFF_MS": "2000",
            # The session's database holds every test's runs, some left pending on purpose
            # (a SIGKILLed charge worker): the reconciler waits past any test's length, so a
            # relay never re-publishes another test's work. tests/e2e/test_recovery.py, on a
            # database of its own, sets a short one.
            "CONTACTO_RECONCILE_AFTER_S": "86400",
            # As the Procfile: an idle consumer polls every 100 ms, not every second.
            "dramatiq_worker_timeout": "100",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def dramatiq_worker(
    module: str,
    queue: str,
    env: dict[str, str],
    *,
    processes: int = 1,
    threads: int = 8,
    ready: bool = True,
) -> Proc:
    """`dramatiq MODULE`; returns once every worker process is ready, unless `ready` is False
    (a supervisor restarting a worker does not wait for it either)."""
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        module,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--queues",
        queue,
    ]
    proc = Proc(argv, env, module.rsplit(".", 1)[-1])
    if ready:
        proc.wait_for("Worker process is ready for action", count=processes)
    return proc


def relay(env: dict[str, str]) -> Proc:
    proc = Proc([sys.executable, "-m", "workers.relay"], env, "relay")
    proc.wait_for("relay.started")
    return proc


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command's ")": state, ppid, pgrp, …
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def _argv(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text().split("\0")
    except OSError:
        return []


def _ppid(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def procfile_process(name: str, env: dict[str, str]) -> Proc:
    """A Procfile line run as honcho runs it (`/bin/sh -c LINE` in the repository, a process
    group of its own), with the interpreter running the tests and metrics on free ports in the
    scratch directory; returns once it is ready (each worker process, for dramatiq)."""
    entry = procfile.read(REPO / "Procfile")[name]
    prom = scratch_dir() / "prom"
    prom.mkdir(exist_ok=True)
    run_env = env | {
        # bin/python: the interpreter running the tests, as `make run` and the demo set it.
        "CONTACTO_PYTHON": sys.executable,
        "CONTACTO_PROM_DIR": str(prom),
        f"CONTACTO_{name.upper()}_METRICS_PORT": str(free_port()),
    }
    proc = Proc(["/bin/sh", "-c", entry.command], run_env, name)
    if entry.program() == "dramatiq":
        count = int(entry.option("--processes", "-p") or 1)
        proc.wait_for("Worker process is ready for action", count=count, timeout_s=60)
    elif entry.program() == "workers.relay":
        proc.wait_for("relay.started", timeout_s=60)
    return proc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Every Proc stops as a supervisor stops it now; the name stays for the web tests.
GroupProc = Proc


def web(env: dict[str, str], port: int, *, workers: int = 1) -> GroupProc:
    """The Procfile's `web` line, run as honcho runs it (`/bin/sh -c LINE` in the repository,
    a process group of its own), on 127.0.0.1:`port`; returns once a worker is serving."""
    entry = procfile.read(REPO / "Procfile")["web"]
    run_env = env | {
        "PORT": str(port),
        "WEB_HOST": "127.0.0.1",
        "CONTACTO_WEB_WORKERS": str(workers),
        # bin/python: the interpreter running the tests, as `make run` and the demo set it.
        "CONTACTO_PYTHON": sys.executable,
    }
    proc = GroupProc(["/bin/sh", "-c", entry.command], run_env, "web")
    proc.wait_for("web.ready", count=workers)
    return proc


@contextmanager
def running(*procs: Proc) -> Iterator[tuple[Proc, ...]]:
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


def eventually(predicate: Callable[[], object], timeout_s: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
