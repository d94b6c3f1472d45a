"""The machine, the servers and the code a run measured: printed above the table and kept in
the JSON, since numbers from a different VM, server setting or commit do not compare."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.pipeline import REPO

PG_SETTINGS = ("server_version", "synchronous_commit", "fsync", "shared_buffers",
               "wal_sync_method", "max_connections", "autovacuum")  # fmt: skip
PACKAGES = ("dramatiq", "asyncpg", "redis", "SQLAlchemy")


async def code_version() -> str:
    """The commit under test, and which worker-side files differ from it."""
    try:
        head = await asyncio.create_subprocess_exec(
            "git", "-C", str(REPO), "rev-parse", "--short", "HEAD",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        commit = (await head.communicate())[0].decode().strip()
        status = await asyncio.create_subprocess_exec(
            "git", "-C", str(REPO), "status", "--porcelain", "--", "common", "config", "workers",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        dirty = [ln[3:] for ln in (await status.communicate())[0].decode().splitlines()]
    except OSError:
        return "unknown"
    if not commit:
        return "unknown (not a git checkout; use --label)"
    return commit + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def host_facts() -> tuple[str, float]:
    """CPU model and memory in GB, blank / 0 where /proc does not say."""
    model, mem_gb = "", 0.0
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        mem_gb = round(int(fh.readline().split()[1]) / 1024 / 1024, 1)
    return model, mem_gb


async def machine_facts(
    admin: asyncpg.Connection[Any], redis: aioredis.Redis, label: str | None
) -> dict[str, Any]:
    model, mem_gb = host_facts()
    pg = {name: await admin.fetchval(f"SHOW {name}") for name in PG_SETTINGS}
    info = await redis.info("server")
    versions = {}
    for pkg in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": label or await code_version(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_gb": mem_gb,
        "kernel": platform.release(),
        # The load before the run: the report points at it when other processes used CPU.
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "postgresql": pg,
        "redis": info.get("redis_version"),
        "packages": versions,
    }
