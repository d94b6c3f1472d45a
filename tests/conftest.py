"""Every tier: the environment of the session, and its scratch directory (created on first
use, removed at the end).

Nothing here connects to anything, so `pytest tests/unit` needs no service. The integration
and e2e tiers add PostgreSQL and Redis with the plugin tests/support/services.py, which may
point DATABASE_URL and REDIS_URL at embedded servers before their test modules are imported.

The environment is set at import, before anything reads settings, so that in-process code and
the worker processes the tests start see the same database, Redis keys and directories.
"""

from __future__ import annotations

import os

import pytest

from common.demo.services import with_database
from tests.support.session import NAMESPACE_PREFIX, TEST_DB, remove_scratch_dir

os.environ.update(
    {
        "DATABASE_URL": with_database(
            os.environ.get("CONTACTO_TEST_PG", "postgresql://postgres@127.0.0.1:5432"), TEST_DB
        ),
        "REDIS_URL": os.environ.get("CONTACTO_TEST_REDIS", "redis://127.0.0.1:6379/0"),
        "CONTACTO_BROKER_NAMESPACE": f"{NAMESPACE_PREFIX}-default",
        "CONTACTO_EVENTS_STREAM": f"{NAMESPACE_PREFIX}:events",
        "LOG_FORMAT": "json",
        "PAYMENT_GATEWAY": "simulated",
    }
)
os.environ.pop("STRIPE_API_KEY", None)
os.environ.pop("STRIPE_API_BASE", None)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # Last: the services plugin stops the embedded servers that live in it first.
    remove_scratch_dir()
