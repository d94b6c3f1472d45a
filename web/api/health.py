"""GET /healthz (the process answers) and GET /readyz (PostgreSQL and Redis answer too):
unauthenticated, for a supervisor or a load balancer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from fastapi import APIRouter, Request
from starlette.responses import Response

from web.api.models import Health, Readiness
from web.resources import resources
from web.responses import JSONBytes

log = structlog.get_logger("web.health")
router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="The process is up",
    response_class=JSONBytes,
    responses={200: {"model": Health}},
)
async def healthz() -> Response:
    return JSONBytes({"status": "ok"})


async def _probe(name: str, check: Callable[[], Awaitable[None]]) -> str:
    """ "ok" or "unavailable"; what went wrong goes to the log, not to an unauthenticated
    caller (it may name hosts)."""
    try:
        await check()
    except Exception as exc:  # whatever the driver raises: the probe reports it
        text = str(exc).strip().splitlines()
        log.warning("web.probe_failed", service=name, error=type(exc).__name__,
                    detail=text[0][:200] if text else None)  # fmt: skip
        return "unavailable"
    return "ok"


@router.get(
    "/readyz",
    summary="PostgreSQL and Redis answer (503 otherwise)",
    response_class=JSONBytes,
    responses={200: {"model": Readiness}, 503: {"model": Readiness}},
)
async def readyz(request: Request) -> Response:
    res = resources(request)
    postgres, redis = await asyncio.gather(
        _probe("postgres", res.check_postgres), _probe("redis", res.check_redis)
    )
    checks = {"postgres": postgres, "redis": redis}
    ready = all(v == "ok" for v in checks.values())
    return JSONBytes(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
