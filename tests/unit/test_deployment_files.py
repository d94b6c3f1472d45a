"""The Procfile and docker-compose.yml run the same processes, as CONTRACT.md names them."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from common.names import ACTOR_QUEUES

REPO = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, list[str]]:
    entries = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            words = shlex.split(command)
            entries[name] = [w for w in words if "=" not in w or w.startswith("-")]
    return entries


def test_the_contract_processes_are_in_the_procfile() -> None:
    assert {"balance", "charge", "retry", "relay"} <= set(procfile())


def test_each_worker_consumes_the_queues_of_the_actors_it_declares() -> None:
    expected = {"balance": {"usage"}, "charge": {"charges"}, "retry": {"retries"}}
    for name, queues in expected.items():
        argv = procfile()[name]
        assert argv[:3] == ["python", "-m", "dramatiq"] and argv[3] == f"workers.{name}"
        assert set(argv[argv.index("--queues") + 1].split(",")) == queues
        module = __import__(f"workers.{name}", fromlist=["broker"])
        declared = {a for a in module.broker.actors if ACTOR_QUEUES[a] in queues}
        assert declared and all(ACTOR_QUEUES[a] in queues for a in declared)


def test_compose_runs_the_procfile_commands() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name, argv in procfile().items():
        assert services[name]["command"] == argv, name
    assert {"postgres", "redis", "migrate"} <= set(services)
