"""Every tier: the environment of the session, and its scratch directory (created here,
removed at the end: worker logs, demo state, tmp_path, embedded servers all live in it).

Nothing here connects to anything, so `pytest tests/unit` needs no service. The integration
and e2e tiers add PostgreSQL and Redis with the plugin tests/support/services.py, which may
point DATABASE_URL and REDIS_URL at embedded servers before their test modules are imported.

The environment is set at import, before anything reads settings, so that in-process code and
the worker processes the tests start see the same database, Redis keys and directories.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from common.demo.services import with_database
from tests.support.session import NAMESPACE_PREFIX, TEST_DB, remove_scratch_dir, scratch_dir

SCRATCH = scratch_dir()

# Hypothesis profiles (`--hypothesis-profile=NAME`). `ci`, the default: a fixed set of
# examples (derandomized: the same ones every run, so a red CI is reproducible and never
# flaky). `long`: twenty times more, freshly random, for a nightly-sized search, e.g.
#   .venv/bin/python -m pytest tests/integration/recharge/test_model.py --hypothesis-profile=long
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("long", max_examples=2000, print_blob=True)
settings.load_profile("ci")

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
        # The Procfile's Prometheus directories (the demo tests run it), under the scratch dir.
        "CONTACTO_PROM_DIR": str(SCRATCH / "prom"),
    }
)
os.environ.pop("STRIPE_API_KEY", None)
os.environ.pop("STRIPE_API_BASE", None)
# pgserver keeps a lock file in the user's runtime directory, /tmp/runtime-<uid> when there is
# none. platformdirs accepts XDG_RUNTIME_DIR only with mode 0700: created so, before pgserver
# (in this process or a demo's) creates it with 0755 and the next process falls back to /tmp.
if not os.environ.get("XDG_RUNTIME_DIR"):
    (SCRATCH / "runtime").mkdir(mode=0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(SCRATCH / "runtime")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # tmp_path and friends under the scratch directory too, unless --basetemp says otherwise.
    if config.option.basetemp is None:
        config.option.basetemp = str(SCRATCH / "pytest")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # Last: the services plugin stops the embedded servers that live in it first.
    remove_scratch_dir()
