"""The run's own PostgreSQL and Redis, in its temporary directory, so that it may restart them.

The system servers (127.0.0.1:5432, :6379) are shared with other people: the run never
restarts or flushes them. PostgreSQL is initdb'd from the newest /usr/lib/postgresql/*/bin;
Redis is `redis-server` with `appendonly yes`, as the issue asks: a Redis that persists and is
restarted cleanly must forget nothing, while a FLUSHALL forgets everything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from bench.pipeline.console import say


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pg_bin() -> Path:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("pg_ctl")
    if found is None:
        raise SystemExit("no PostgreSQL binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin")
    return Path(found).parent


class Postgres:
    """initdb + pg_ctl in `base`, trust auth for `postgres`, on a free loopback port."""

    def __init__(self, base: Path) -> None:
        self.bin = _pg_bin()
        # PostgreSQL refuses to run as root: as root, its directory belongs to the system's
        # `postgres` user, and initdb and pg_ctl run as that user.
        self.user = "postgres" if os.geteuid() == 0 else None
        self.home = base / "pg"
        self.data = self.home / "data"
        self.sockets = self.home / "sock"
        self.log = self.home / "postgres.log"
        self.port = free_port()
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def start(self) -> None:
        if not self.data.exists():
            self.sockets.mkdir(parents=True)
            if self.user is not None:
                _reachable_by_others(self.home)
                for path in (self.home, self.sockets):
                    shutil.chown(path, self.user, self.user)
            subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
                check=True, capture_output=True, **self._as_user(),
            )  # fmt: skip
        # fsync off: the restart here is a clean one (`-m fast` writes everything out); fsync
        # only guards against the operating system crashing, which this run does not simulate,
        # and the machine's disk is shared with other people's work.
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._ctl("start", "-w", "-t", "60", "-o", options)
        say(f"PostgreSQL on 127.0.0.1:{self.port} ({self.data})")

    def restart(self) -> float:
        """A clean restart (`pg_ctl restart -m fast`): sessions are cut, nothing is lost.
        Returns the seconds PostgreSQL did not answer."""
        started = time.monotonic()
        self._ctl("stop", "-w", "-t", "60", "-m", "fast")
        self.start()
        self.restarts += 1
        return time.monotonic() - started

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._ctl("stop", "-w", "-t", "60", "-m", "immediate")

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args],
            check=True, capture_output=True, **self._as_user(),
        )  # fmt: skip

    def _as_user(self) -> dict[str, Any]:
        """subprocess's arguments to run as `self.user`: its group too, and none of root's,
        or a directory whose group is root's would refuse it the access "others" have."""
        if self.user is None:
            return {}
        return {"user": self.user, "group": self.user, "extra_groups": []}


def _reachable_by_others(path: Path) -> None:
    """o+x on every directory above `path` (a temporary directory is 0700), so that the
    `postgres` user can reach its own directory; nothing is made readable."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


class Redis:
    """A redis-server child with an append-only file in `base`, on a free loopback port."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = base / "redis.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.flushes = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--appendonly", "yes", "--dir", str(self.dir), "--save", "",
                 "--protected-mode", "no"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with contextlib.closing(self.client()) as c:
                    c.ping()
                    # Loading the append-only file: the server answers LOADING until done.
                    if int(c.info("persistence").get("loading", 0)) == 0:
                        break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"redis-server did not start, see {self.log}")
            time.sleep(0.05)
        say(f"Redis on 127.0.0.1:{self.port} (appendonly, {self.dir})")

    def restart(self) -> float:
        """SHUTDOWN (the append-only file is written out) and start again on the same port and
        directory. Returns the seconds Redis did not answer."""
        started = time.monotonic()
        self._shutdown()
        self.start()
        self.restarts += 1
        return time.monotonic() - started

    def flush(self) -> None:
        """FLUSHALL: every queue, in-flight message, heartbeat and event is forgotten."""
        with contextlib.closing(self.client()) as c:
            c.flushall()
        self.flushes += 1

    def _shutdown(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(redis.RedisError), contextlib.closing(self.client()) as c:
            c.shutdown()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
