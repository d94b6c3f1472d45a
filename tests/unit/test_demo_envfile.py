"""demo.env says which demo wrote it; a stopped demo's file says STALE; the CLI warns."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.cli import main as cli_main
from common.demo import envfile


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def demo_lookalike() -> Iterator[int]:
    """A live process whose command line says `demo`, like `contacto-billing demo`."""
    code = "import time; print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, "demo"], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # exec'd, running
    yield proc.pid
    proc.kill()
    proc.wait()


def read_env(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_written_with_the_demos_pid_and_start(tmp_path: Path) -> None:
    path = tmp_path / "demo.env"
    written = envfile.write(path, {"DATABASE_URL": "postgresql://x/demo"}, 4242, "T0")
    text = path.read_text()
    assert text.startswith("# Written by `contacto-billing demo` (pid 4242, started T0)")
    assert (
        read_env(path)
        == written
        == {
            "CONTACTO_DEMO_PID": "4242",
            "CONTACTO_DEMO_STARTED": "T0",
            "DATABASE_URL": "postgresql://x/demo",
        }
    )


def test_a_clean_stop_marks_it_stale_and_keeps_the_values(tmp_path: Path) -> None:
    path = tmp_path / "demo.env"
    envfile.write(path, {"REDIS_URL": "redis://h:1/0"}, 4242, "T0")
    before = read_env(path)
    assert not envfile.mark_stale(path, 999)  # another demo's file: left alone
    assert not path.read_text().startswith("# STALE")
    assert envfile.mark_stale(path, 4242)
    text = path.read_text()
    assert text.startswith("# STALE: the demo that wrote this file (pid 4242, started T0)")
    assert "Written by" not in text
    assert read_env(path) == before
    assert not envfile.mark_stale(tmp_path / "missing.env", 4242)


def test_honcho_and_the_shell_read_only_the_values(tmp_path: Path) -> None:
    path = tmp_path / "demo.env"
    envfile.write(path, {"DATABASE_URL": "postgresql://u@/d?host=/tmp/x"}, 4242, "T0")
    envfile.mark_stale(path, 4242)
    honcho = pytest.importorskip("honcho.environ")
    assert honcho.parse(path.read_text()) == read_env(path)
    shell = subprocess.run(
        ["/bin/sh", "-c", f'set -a; . "{path}"; set +a; printf %s "$DATABASE_URL"'],
        capture_output=True, text=True, check=True, env={},
    ).stdout  # fmt: skip
    assert shell == "postgresql://u@/d?host=/tmp/x"


def test_warns_only_when_the_demo_is_gone(demo_lookalike: int) -> None:
    assert envfile.stale_warning({}) is None
    assert envfile.stale_warning({"CONTACTO_DEMO_PID": str(demo_lookalike)}) is None
    assert envfile.stale_warning({"CONTACTO_DEMO_PID": str(os.getpid())}) is None
    gone = dead_pid()
    warning = envfile.stale_warning({"CONTACTO_DEMO_PID": str(gone), "CONTACTO_DEMO_STARTED": "T"})
    assert warning and f"CONTACTO_DEMO_PID={gone}, started T" in warning
    if Path("/proc/self/cmdline").exists():  # a reused pid: alive, but not a demo
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            while b"sleep" not in Path(f"/proc/{sleeper.pid}/cmdline").read_bytes():
                time.sleep(0.01)  # until exec'd: before, it is a copy of this process
            assert envfile.stale_warning({"CONTACTO_DEMO_PID": str(sleeper.pid)})
        finally:
            sleeper.kill()
            sleeper.wait()


def test_the_cli_warns_on_stderr(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    def parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser()
        p.set_defaults(func=lambda _args: 0)
        return p

    monkeypatch.setattr(cli_main, "build_parser", parser)
    monkeypatch.setenv("CONTACTO_DEMO_PID", str(dead_pid()))
    assert cli_main.main([]) == 0
    assert "contacto-billing: warning: this environment comes from a demo.env" in (
        capsys.readouterr().err
    )
    monkeypatch.delenv("CONTACTO_DEMO_PID")
    assert cli_main.main([]) == 0
    assert capsys.readouterr().err == ""
