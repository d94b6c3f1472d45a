"""The Procfile, docker-compose.yml and the Dockerfile run the same processes, as the public
interface names them; the Procfile's ports come from the environment; the image holds what
they run."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from common import procfile
from common.names import ACTOR_QUEUES
from config.settings import WebSettings

REPO = Path(__file__).resolve().parents[2]
WORKERS = ("balance", "charge", "retry", "relay")
# What each process's metrics port is called in the environment, and its default.
METRICS_PORTS = {
    "balance": ("dramatiq_prom_port", "CONTACTO_BALANCE_METRICS_PORT", "9191"),
    "charge": ("dramatiq_prom_port", "CONTACTO_CHARGE_METRICS_PORT", "9192"),
    "retry": ("dramatiq_prom_port", "CONTACTO_RETRY_METRICS_PORT", "9193"),
    "relay": ("CONTACTO_METRICS_PORT", "CONTACTO_RELAY_METRICS_PORT", "9194"),
}
LAUNCHER = "bin/python"


def procfile_entries() -> dict[str, procfile.Entry]:
    return procfile.read(REPO / "Procfile")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


# --- Procfile ----------------------------------------------------------------------------------


def test_the_contract_processes_are_in_the_procfile() -> None:
    assert set(WORKERS) <= set(procfile_entries())


def test_each_worker_consumes_the_queues_of_the_actors_it_declares() -> None:
    expected = {"balance": {"usage"}, "charge": {"charges"}, "retry": {"retries"}}
    for name, queues in expected.items():
        argv = procfile_entries()[name].argv
        assert argv[:3] == (LAUNCHER, "-m", "dramatiq") and argv[3] == f"workers.{name}"
        assert set(argv[argv.index("--queues") + 1].split(",")) == queues
        module = __import__(f"workers.{name}", fromlist=["broker"])
        declared = {a for a in module.broker.actors if ACTOR_QUEUES[a] in queues}
        assert declared and all(ACTOR_QUEUES[a] in queues for a in declared)


def test_every_process_runs_the_repositorys_python() -> None:
    """Not a bare `python`: `.venv/bin/honcho start` must work without activating the venv."""
    for entry in procfile_entries().values():
        assert entry.argv[0] == LAUNCHER, entry.name
    assert os.access(REPO / LAUNCHER, os.X_OK)


def test_web_comes_first_and_listens_on_port_and_web_host() -> None:
    """honcho sets PORT for every process, to its base port plus 100 per line before: the
    first line gets PORT itself (the environment's, ./.env's, or honcho's 5000)."""
    entries = procfile_entries()
    assert next(iter(entries)) == "web"
    web = entries["web"]
    assert web.argv == (LAUNCHER, "-m", "web")
    defaults = WebSettings()
    assert web.env == {
        "PORT": f"${{PORT:-{defaults.port}}}",
        "WEB_HOST": f"${{WEB_HOST:-{defaults.host}}}",
    }
    assert procfile.expand(web.env["PORT"], {}) == "8000"
    assert procfile.expand(web.env["WEB_HOST"], {}) == "127.0.0.1"
    assert procfile.expand(web.env["PORT"], {"PORT": "5000"}) == "5000"


def test_metrics_ports_and_directory_come_from_the_environment() -> None:
    entries = procfile_entries()
    for name, (variable, setting, default) in METRICS_PORTS.items():
        written = entries[name].env[variable]
        assert written == f"${{{setting}:-{default}}}", name
        assert procfile.expand(written, {}) == default
        assert procfile.expand(written, {setting: "19191"}) == "19191"
    for name in ("balance", "charge", "retry"):
        directory = entries[name].env["dramatiq_prom_db"]
        assert procfile.expand(directory, {}) == f"/tmp/contacto-prom/{name}"
        assert procfile.expand(directory, {"CONTACTO_PROM_DIR": "/x"}) == f"/x/{name}"
    assert len({default for _v, _s, default in METRICS_PORTS.values()}) == len(METRICS_PORTS)


def test_idle_dramatiq_consumers_poll_every_100_ms_in_the_procfile_and_compose() -> None:
    """dramatiq's default idle poll is 1 s: the first message after a quiet spell waited up to
    that long (docs/performance.md, "Latency"); the charge worker, which a threshold crossing
    waits on, polls every 50 ms."""
    services = compose()["services"]
    for name, ms in (("balance", "100"), ("charge", "50"), ("retry", "100")):
        assert procfile_entries()[name].env["dramatiq_worker_timeout"] == ms, name
        assert services[name]["environment"]["dramatiq_worker_timeout"] == ms, name


def test_the_shell_runs_each_line_as_parsed(tmp_path: Path) -> None:
    """What honcho does (`/bin/sh -c LINE` in the Procfile's directory), with a stand-in for
    the interpreter that prints its environment and arguments."""
    fake = tmp_path / "fake-python"
    fake.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$dramatiq_prom_port" "$dramatiq_prom_db" '
        '"$CONTACTO_METRICS_PORT" "$PORT" "$WEB_HOST" "$@"\n'
    )
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "CONTACTO_PYTHON": str(fake)}
    for overrides in (
        {},
        {"CONTACTO_BALANCE_METRICS_PORT": "9291", "CONTACTO_PROM_DIR": "/p"},
        {"PORT": "5000", "WEB_HOST": "0.0.0.0"},
    ):
        run_env = env | overrides
        for entry in procfile_entries().values():
            out = subprocess.run(
                ["/bin/sh", "-c", entry.command], cwd=REPO, env=run_env,
                capture_output=True, text=True, check=True, timeout=10,
            ).stdout.splitlines()  # fmt: skip
            variables = ("dramatiq_prom_port", "dramatiq_prom_db", "CONTACTO_METRICS_PORT")
            want = [procfile.expand(entry.env.get(v, ""), run_env) for v in variables]
            # PORT and WEB_HOST: the line's own assignment, else what the environment had.
            want += [
                procfile.expand(entry.env[v], run_env) if v in entry.env else run_env.get(v, "")
                for v in ("PORT", "WEB_HOST")
            ]
            assert out == [*want, *entry.argv[1:]], entry.name
            if entry.name == "balance" and "CONTACTO_PROM_DIR" in overrides:
                assert out[:2] == ["9291", "/p/balance"]
            if entry.name == "web":
                assert out[3:5] == [
                    run_env.get("PORT", "8000"),
                    run_env.get("WEB_HOST", "127.0.0.1"),
                ]


def test_the_launcher_finds_the_venv_without_activation() -> None:
    venv_python = REPO / ".venv" / "bin" / "python"
    if not venv_python.exists():
        pytest.skip("no .venv in the repository")
    env = {"PATH": "/usr/bin:/bin"}  # neither activated nor on PATH
    out = subprocess.run(
        [str(REPO / LAUNCHER), "-c", "import sys; print(sys.prefix)"],
        env=env, capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    assert Path(out).resolve() == (REPO / ".venv").resolve()


def test_the_launcher_falls_back_to_python3_where_there_is_no_venv(tmp_path: Path) -> None:
    """As in the Docker image: /app/bin/python, no /app/.venv."""
    (tmp_path / "bin").mkdir()
    launcher = tmp_path / LAUNCHER
    launcher.write_bytes((REPO / LAUNCHER).read_bytes())
    launcher.chmod(0o755)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    out = subprocess.run(
        [str(launcher), "-c", "import sys; print(sys.executable)"],
        env=env, capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    assert Path(out).name == "python3"


@pytest.mark.skipif(importlib.util.find_spec("honcho") is None, reason="honcho not installed")
def test_honcho_reads_the_same_processes() -> None:
    from honcho.environ import parse_procfile

    parsed = parse_procfile((REPO / "Procfile").read_text())
    ours = procfile_entries()
    assert list(parsed.processes) == list(ours)
    assert dict(parsed.processes) == {n: e.command for n, e in ours.items()}
    check = subprocess.run(
        [sys.executable, "-m", "honcho", "check"], cwd=REPO, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_runs_the_procfile_commands() -> None:
    """The same argv, with the image's one Python for the Procfile's launcher."""
    services = compose()["services"]
    for name, entry in procfile_entries().items():
        assert services[name]["command"] == ["python", *entry.argv[1:]], name
    assert {"postgres", "redis", "migrate"} <= set(services)


def test_compose_publishes_the_procfile_ports_under_the_same_variables() -> None:
    services = compose()["services"]
    for name, (variable, setting, default) in METRICS_PORTS.items():
        assert services[name]["environment"][variable] == default, name
        assert services[name]["ports"] == [f"${{{setting}:-{default}}}:{default}"], name


def test_compose_serves_the_api_on_every_interface_of_its_container_only() -> None:
    """Inside the container the API must listen on 0.0.0.0 for the published port to reach
    it; the host publishes it where the Procfile binds it: WEB_HOST:PORT, loopback by
    default."""
    web = compose()["services"]["web"]
    assert web["environment"]["PORT"] == "8000"
    assert web["environment"]["WEB_HOST"] == "0.0.0.0"
    assert web["ports"] == ["${WEB_HOST:-127.0.0.1}:${PORT:-8000}:8000"]
    assert "/readyz" in " ".join(web["healthcheck"]["test"])


def test_every_app_service_builds_the_dockerfile() -> None:
    services = compose()["services"]
    app = [n for n, s in services.items() if "build" in s]
    assert set(app) == {*WORKERS, "web", "migrate", "cli"}
    for name in app:
        assert services[name]["build"] in (".", {"context": "."}), name
        assert services[name]["image"] == "contacto-billing:local"
    assert services["migrate"]["command"] == ["contacto-billing", "db", "upgrade"]
    assert services["cli"]["entrypoint"] == ["contacto-billing"]


def test_compose_needs_no_newer_compose_than_it_says() -> None:
    """docker-compose 1.29 (Debian 12's) must accept it: nothing from Compose v2 only."""
    text = (REPO / "docker-compose.yml").read_text()
    assert "1.29" in text  # the comment that says which versions it needs
    data = compose()
    assert "version" not in data  # obsolete for Compose v2, which warns about it
    assert not {"include", "name"} & set(data)  # top-level keys of Compose 2.20+ / 1.x-invalid
    newer = {"dockerfile_inline", "additional_contexts", "develop"}  # Compose 2.17+, 2.22+
    for name, service in data["services"].items():
        build = service.get("build")
        keys = set(service) | (set(build) if isinstance(build, dict) else set())
        assert not keys & newer, (name, keys & newer)
        for dependency in (service.get("depends_on") or {}).values():
            # `required` and `restart` are 2.17+/2.20+; the conditions used are 1.29's.
            assert set(dependency) == {"condition"}, name
            assert dependency["condition"] in ("service_healthy", "service_completed_successfully")
    assert "!reset" not in text and "!override" not in text


# --- Dockerfile --------------------------------------------------------------------------------


def test_the_dockerfile_installs_the_project_for_every_process() -> None:
    steps = dockerfile()
    assert steps[0][0] == "FROM"
    python = re.fullmatch(r"python:(\d+\.\d+)-slim\S*", steps[0][1])
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert python and pyproject["project"]["requires-python"] == f">={python.group(1)}"
    copied = {
        word.rstrip("/")
        for instruction, args in steps
        if instruction == "COPY"
        for word in shlex.split(args)[:-1]
    }
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    # The packages, what pip needs to install them (README.md is the project's readme), and
    # what a Procfile line needs to run as written (the Procfile, its launcher).
    assert packages | {"pyproject.toml", "README.md", "Procfile", "bin"} <= copied
    runs = " ".join(args for instruction, args in steps if instruction == "RUN")
    assert "pip install --no-deps -e ." in runs
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".contacto", ".git", ".env"} <= set(ignored)
