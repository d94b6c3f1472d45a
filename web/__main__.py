"""`python -m web`: the Procfile's `web` process (uvicorn serving `web.app:create_app`).

Like every process: settings checked first (one `settings.invalid` line and exit 78), then
the schema (exit 78 on a database that is missing or behind; PostgreSQL not answering is only
a warning: /readyz says 503 until it does). Then uvicorn binds WEB_HOST:PORT and runs
CONTACTO_WEB_WORKERS processes, each with its own event loop (uvloop), HTTP parser (httptools)
and resources. SIGTERM or SIGINT: requests in flight get CONTACTO_WEB_SHUTDOWN_S seconds, then
the resources are disposed and the process exits.
"""

from __future__ import annotations

import asyncio
import sys

import structlog
import uvicorn
from pydantic import ValidationError

from common.logging import configure_logging
from config.settings import WebSettings, get_web_settings, settings_problem
from workers._startup import EXIT_NOT_STARTED, NotStarted, check_schema, load_settings

log = structlog.get_logger("web")


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def uvicorn_config(web: WebSettings) -> dict[str, object]:
    """uvicorn.run's keyword arguments for these settings."""
    return {
        "factory": True,
        "host": web.host,
        "port": web.port,
        "workers": web.workers,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        # Logging is ours (structlog, JSON, scrubbed): uvicorn's loggers go through it.
        "log_config": None,
        # One `http.request` line per request comes from web/middleware.py instead.
        "access_log": False,
        "server_header": False,
        # Bound to loopback by default: no proxy's X-Forwarded-* is trusted.
        "proxy_headers": False,
        "timeout_graceful_shutdown": web.shutdown_timeout_s,
        "timeout_keep_alive": 5,
    }


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_format)
    try:
        web = get_web_settings()
    except ValidationError as exc:
        log.error("settings.invalid", error=settings_problem(exc))
        sys.exit(EXIT_NOT_STARTED)
    try:
        asyncio.run(check_schema(settings, unreachable_is_fatal=False))
    except NotStarted:
        sys.exit(EXIT_NOT_STARTED)
    log.info("web.starting", url=base_url(web.host, web.port), workers=web.workers)
    uvicorn.run("web.app:create_app", **uvicorn_config(web))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
