"""The start-up check of every process: the database schema must be the one this code expects.

Without it, a process started on an empty database fails on every message (dramatiq workers)
or prints a traceback every poll (the relay), and the cause is buried in the noise. Instead it
logs one line saying what to do and exits with EXIT_NOT_STARTED.
"""

from __future__ import annotations

import os

import structlog
from pydantic import ValidationError

from common.db.schema import schema_status
from common.db.unavailable import UPGRADE_HINT, DatabaseUnavailable
from common.logging import configure_logging
from config.settings import Settings, get_settings, settings_problem

log = structlog.get_logger("workers.startup")

# EX_CONFIG: a supervisor can tell "will not work until someone acts" from a crash.
EXIT_NOT_STARTED = getattr(os, "EX_CONFIG", 78)


class NotStarted(Exception):
    """This process must not start; why was logged, in one line."""


def load_settings() -> Settings:
    """The settings, or one line naming what is wrong and exit (a traceback says less)."""
    try:
        return get_settings()
    except ValidationError as exc:
        configure_logging()  # the default format: LOG_FORMAT itself may be what is wrong
        log.error("settings.invalid", error=settings_problem(exc))
        raise SystemExit(EXIT_NOT_STARTED) from None


async def check_schema(settings: Settings, *, unreachable_is_fatal: bool) -> None:
    """Raise NotStarted unless the schema is at this code's head.

    PostgreSQL not answering is fatal only when asked: the dramatiq workers start anyway (their
    messages wait and are retried until it is back), the relay cannot do without it.
    """
    try:
        status = await schema_status(settings)
    except DatabaseUnavailable as exc:
        if unreachable_is_fatal:
            log.error("db.unreachable", error=str(exc))
            raise NotStarted from None
        log.warning("db.unreachable", error=str(exc), schema="not checked")
        return
    fields = {"database": status.database, "revision": status.revision, "head": status.head}
    if status.state == "current":
        return
    if status.state == "unknown":
        # Migrated by a newer release: that code owns the schema; this one may still fit it.
        log.warning("db.schema_unknown", **fields)
        return
    if status.state == "missing":
        log.error(
            "db.schema_missing", **fields, database_exists=status.database_exists, hint=UPGRADE_HINT
        )
    else:
        log.error("db.schema_outdated", **fields, hint=UPGRADE_HINT)
    raise NotStarted
