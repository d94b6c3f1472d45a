"""The e2e tier: real processes on real PostgreSQL and Redis (see tests/support/services.py)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.import_plugin("tests.support.services")


@pytest.fixture(scope="session", autouse=True)
def _services_ready(database: str, redis_cleanup: None) -> None:
    """The session's database migrated (dropped at the end), its Redis keys removed at the end."""
