"""What the phases of one run share: its random id and the names derived from it, the servers'
clients, and the child processes started so far."""

from __future__ import annotations

import argparse
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aioredis

from bench.pipeline.database import BenchDatabase
from bench.pipeline.processes import Processes, child_env


@dataclass(slots=True)
class Context:
    args: argparse.Namespace
    run: str  # random: two runs at once (other worktrees) never share a database or keys
    ns: str  # the dramatiq namespace prefix; each phase uses `<ns>:<phase>`
    occurred_at: str  # one timestamp for every event, so the parent and children agree
    logdir: Path
    redis: aioredis.Redis
    db: BenchDatabase
    processes: Processes

    @classmethod
    def create(cls, args: argparse.Namespace) -> Context:
        run = secrets.token_hex(4)
        return cls(
            args=args,
            run=run,
            ns=f"contacto-bench-{run}",
            occurred_at=datetime.now(UTC).replace(microsecond=0).isoformat(),
            logdir=Path(tempfile.mkdtemp(prefix=f"contacto-bench-{run}-")),
            redis=aioredis.Redis.from_url(args.redis_url),
            db=BenchDatabase(args.pg_url, f"contacto_bench_{run}"),
            processes=Processes(),
        )

    def child_env(self, namespace: str) -> dict[str, str]:
        return child_env(
            db_url=self.db.url,
            redis_url=self.args.redis_url,
            namespace=namespace,
            worker_env=self.args.worker_env,
        )
