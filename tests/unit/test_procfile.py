"""common/procfile.py: the one parser of the Procfile."""

from __future__ import annotations

import subprocess

import pytest

from common import procfile

TEXT = """\
# a comment: with a colon
web: gunicorn app:wsgi --bind 0.0.0.0:$PORT
worker: A=1 B="two words" ${PY:-python} -m dramatiq workers.x -p 3 --threads=8 --queues q
  indented: not a process for honcho
bad name: neither
"""


def test_processes_and_their_parts() -> None:
    entries = procfile.parse(TEXT)
    assert list(entries) == ["web", "worker"]
    worker = entries["worker"]
    assert worker.command.startswith("A=1 B=")
    assert worker.env == {"A": "1", "B": "two words"}
    assert worker.argv[:4] == ("${PY:-python}", "-m", "dramatiq", "workers.x")
    assert worker.option("--processes", "-p") == "3"
    assert worker.option("--threads") == "8"
    assert worker.option("--nope") is None
    assert worker.program() == "dramatiq"
    assert entries["web"].env == {}
    assert entries["web"].program() == "gunicorn"


def test_the_same_processes_as_honcho() -> None:
    honcho = pytest.importorskip("honcho.environ")
    assert dict(honcho.parse_procfile(TEXT).processes) == {
        name: entry.command for name, entry in procfile.parse(TEXT).items()
    }


@pytest.mark.parametrize(
    "text",
    ["${P:-9191}", "${P}", "$P/x", "a${P:-}b", "${P:-/tmp/a b}/c", "${Q:-1}${P:-2}", "plain"],
)
@pytest.mark.parametrize("environ", [{}, {"P": "7"}, {"P": ""}, {"P": "7", "Q": "8"}])
def test_expand_as_the_shell_does(text: str, environ: dict[str, str]) -> None:
    shell = subprocess.run(
        ["/bin/sh", "-c", f'printf %s "{text}"'], env=environ, capture_output=True, text=True
    ).stdout
    assert procfile.expand(text, environ) == shell
