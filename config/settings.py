"""Settings read from the environment (the variables README documents, plus operational knobs).

Every public variable (README, "Configuration") keeps its exact name; the extra knobs are
prefixed `CONTACTO_` so that they never collide with a platform's own variables.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The public interface accepts both `postgresql://` and `postgresql+asyncpg://`.
POSTGRESQL_SCHEMES = ("postgresql+asyncpg://", "postgresql://", "postgres://")
BROKER_SCHEMES = ("amqp://", "amqps://", "redis://", "rediss://")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    # --- the public interface (README, "Configuration") ----------------------------------------
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/contacto", validation_alias="DATABASE_URL"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    # The workers' queues: unset, Redis at REDIS_URL (which also holds the event stream and the
    # simulated gateway's state, whichever the broker); `amqp://…`: RabbitMQ.
    broker_url: str | None = Field(None, validation_alias="BROKER_URL")
    payment_gateway: Literal["simulated", "stripe"] = Field(
        "simulated", validation_alias="PAYMENT_GATEWAY"
    )
    stripe_api_key: SecretStr | None = Field(None, validation_alias="STRIPE_API_KEY")
    stripe_api_base: str | None = Field(None, validation_alias="STRIPE_API_BASE")
    min_recharge_amount: Decimal = Field(Decimal("25"), validation_alias="MIN_RECHARGE_AMOUNT")
    max_recharge_amount: Decimal = Field(Decimal("10000"), validation_alias="MAX_RECHARGE_AMOUNT")
    retry_min_interval_s: float = Field(1800.0, validation_alias="RETRY_MIN_INTERVAL_SECONDS")
    log_format: Literal["json", "console"] = Field("json", validation_alias="LOG_FORMAT")

    # --- operational knobs (CONTACTO_*) --------------------------------------------------------
    # dramatiq keys live under this namespace; tests use their own to share one Redis.
    broker_namespace: str = Field("dramatiq", validation_alias="CONTACTO_BROKER_NAMESPACE")
    events_stream: str = Field("contacto:events", validation_alias="CONTACTO_EVENTS_STREAM")
    events_stream_maxlen: int = Field(1_000_000, validation_alias="CONTACTO_EVENTS_STREAM_MAXLEN")
    # dramatiq redelivers a dead worker's unacked messages after this long without heartbeat
    # (its default is 60 s). A live worker beats at least every second (its delay-queue consumer
    # polls even while every thread is busy), so 15 s is many missed beats, not a slow message.
    broker_heartbeat_timeout_ms: int = Field(
        15_000, gt=0, validation_alias="CONTACTO_BROKER_HEARTBEAT_TIMEOUT_MS"
    )
    # Per million broker commands, the chance that one also runs dramatiq's maintenance
    # (requeue dead workers' messages, expire dead letters). The relay runs it on a clock
    # (below), so the workers' dice are only a fallback for a deployment without a relay; each
    # roll that hits runs a KEYS over the whole Redis database (docs/performance.md).
    broker_maintenance_chance: int = Field(
        100, ge=0, le=1_000_000, validation_alias="CONTACTO_BROKER_MAINTENANCE_CHANCE"
    )
    # The relay runs dramatiq's maintenance on every queue this often: a dead worker's messages
    # are back on their queue within heartbeat timeout + this.
    broker_maintenance_interval_s: float = Field(
        5.0, gt=0, validation_alias="CONTACTO_BROKER_MAINTENANCE_INTERVAL_S"
    )
    # The reconciler (common/recharge/reconcile.py, run by the relay) re-publishes the message
    # of a run, failure or re-check that is unfinished in the database, made no progress for
    # this long, and whose message the broker no longer holds (a flushed or failed-over Redis).
    reconcile_after_s: float = Field(60.0, gt=0, validation_alias="CONTACTO_RECONCILE_AFTER_S")
    # How often the relay looks for such work.
    reconcile_interval_s: float = Field(
        10.0, gt=0, validation_alias="CONTACTO_RECONCILE_INTERVAL_S"
    )
    # A customer's on-session 3-D Secure confirmation (console, PAYMENT_GATEWAY=stripe) that the
    # browser has not reported this long after it started: the relay's sweep asks Stripe and
    # credits it if the money was taken (common/recharge/authentication.py). Also how often the
    # sweep asks again about one that is still unconfirmed.
    authentication_sweep_after_s: float = Field(
        120.0, gt=0, validation_alias="CONTACTO_AUTHENTICATION_SWEEP_AFTER_S"
    )
    # ... and after this long unconfirmed the sweep gives up on it (the customer can start again).
    authentication_give_up_after_s: float = Field(
        86_400.0, gt=0, validation_alias="CONTACTO_AUTHENTICATION_GIVE_UP_AFTER_S"
    )
    # dramatiq deletes dead letters older than this (its own default is 7 days): a dead-lettered
    # usage message is a debit not yet made, so the default leaves a month to notice and requeue.
    dead_message_ttl_days: float = Field(30.0, validation_alias="CONTACTO_DEAD_MESSAGE_TTL_DAYS")
    # `queues` and `audit` warn about dead letters older than this: each is work not done.
    dead_letter_warn_after_s: float = Field(
        86_400.0, validation_alias="CONTACTO_DEAD_LETTER_WARN_AFTER_S"
    )
    # `audit` reports a run pending or failing with no progress for longer than this.
    stuck_run_after_s: float = Field(3600.0, validation_alias="CONTACTO_STUCK_RUN_AFTER_S")
    retries_max: int = Field(20, validation_alias="CONTACTO_RETRIES_MAX")
    retries_min_backoff_ms: int = Field(500, validation_alias="CONTACTO_RETRIES_MIN_BACKOFF_MS")
    retries_max_backoff_ms: int = Field(300_000, validation_alias="CONTACTO_RETRIES_MAX_BACKOFF_MS")
    run_max_charges: int = Field(10, validation_alias="CONTACTO_RUN_MAX_CHARGES")
    db_pool_size: int = Field(5, validation_alias="CONTACTO_DB_POOL_SIZE")
    # Group commit: how many events of concurrently delivered usage messages one transaction may
    # take. Single events from 64 threads make groups of ~30; batches of 100 go two at a time:
    # bigger transactions hold more account locks for longer, and the other process waits.
    usage_coalesce_max_events: int = Field(
        200, validation_alias="CONTACTO_USAGE_COALESCE_MAX_EVENTS"
    )
    # Group-commit transactions running at once per balance worker process. A second one starts
    # only when CONTACTO_USAGE_OVERLAP_MIN_EVENTS wait: single-event messages then coalesce into
    # fewer, larger transactions, while big batches overlap database and Python time.
    usage_max_in_flight: int = Field(3, validation_alias="CONTACTO_USAGE_MAX_IN_FLIGHT")
    usage_overlap_min_events: int = Field(200, validation_alias="CONTACTO_USAGE_OVERLAP_MIN_EVENTS")
    relay_poll_interval_s: float = Field(1.0, validation_alias="CONTACTO_RELAY_POLL_INTERVAL_S")
    relay_batch_size: int = Field(500, validation_alias="CONTACTO_RELAY_BATCH_SIZE")
    # How long a notification of domain events alone waits for more before the relay drains
    # (common/outbox/wake.py): events are published at most this much later. Messages: at once.
    relay_event_delay_ms: int = Field(20, ge=0, validation_alias="CONTACTO_RELAY_EVENT_DELAY_MS")
    gateway_timeout_s: float = Field(20.0, validation_alias="CONTACTO_GATEWAY_TIMEOUT_S")
    metrics_port: int | None = Field(None, validation_alias="CONTACTO_METRICS_PORT")
    # Redis prefix of the simulated gateway's state (idempotency records, injected faults).
    simulated_gateway_prefix: str = Field(
        "contacto:simgw", validation_alias="CONTACTO_SIMULATED_PREFIX"
    )
    # Redis of the simulated gateway's state (default: REDIS_URL). A gateway is not ours: its
    # records must outlive a flush or a failover of our broker's Redis, or a chaos run could
    # not tell a charge the gateway forgot from one that never happened.
    simulated_gateway_redis_url: str | None = Field(
        None, validation_alias="CONTACTO_SIMULATED_REDIS_URL"
    )

    @field_validator("database_url")
    @classmethod
    def _postgresql_url(cls, value: str) -> str:
        # Refused now, with the variable's name, rather than at the first connection.
        if not value.startswith(POSTGRESQL_SCHEMES):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(BROKER_SCHEMES):
            raise ValueError("must be an amqp://, amqps://, redis:// or rediss:// URL")
        return value or None

    @property
    def broker_is_rabbitmq(self) -> bool:
        return self.broker_url is not None and self.broker_url.startswith(("amqp://", "amqps://"))

    @property
    def broker_redis_url(self) -> str:
        """The broker's Redis when it is Redis: BROKER_URL if it says redis, else REDIS_URL."""
        return (
            self.broker_url if self.broker_url and not self.broker_is_rabbitmq else self.redis_url
        )

    @field_validator("min_recharge_amount", "max_recharge_amount", mode="before")
    @classmethod
    def _money_is_text(cls, value: object) -> object:
        # A float here would already be inexact; the environment only ever gives text.
        if isinstance(value, float):
            raise ValueError("recharge limits must be decimal strings")
        return value

    @property
    def dead_message_ttl_ms(self) -> int:
        return int(self.dead_message_ttl_days * 86_400_000)

    @property
    def async_database_url(self) -> str:
        return to_asyncpg_url(self.database_url)

    @property
    def asyncpg_dsn(self) -> str:
        """The URL as asyncpg itself takes it (no SQLAlchemy driver suffix)."""
        return "postgresql://" + self.async_database_url.split("://", 1)[1]


def to_asyncpg_url(url: str) -> str:
    for prefix in POSTGRESQL_SCHEMES:
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


class AccessLog(StrEnum):
    ALL = "all"
    ERRORS = "errors"
    OFF = "off"


class WebSettings(BaseSettings):
    """The `web` process's own knobs, read only by that process: a platform's PORT that is not
    a number must stop the web process, not every worker that happens to inherit it."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    # PORT as platforms (and honcho, which gives the Procfile's first line its base port) set it.
    port: int = Field(8000, ge=1, le=65535, validation_alias="PORT")
    # Loopback unless said otherwise: the API holds balances; exposing it is a decision.
    host: str = Field("127.0.0.1", min_length=1, validation_alias="WEB_HOST")
    # uvicorn worker processes: each has its own event loop, connection pool and broker client.
    workers: int = Field(2, ge=1, le=64, validation_alias="CONTACTO_WEB_WORKERS")
    # PostgreSQL connections per worker process (SQLAlchemy pool; 2 more may overflow).
    db_pool_size: int = Field(8, ge=1, le=200, validation_alias="CONTACTO_WEB_DB_POOL_SIZE")
    # Request bodies above this are refused with 413 before they are read. A batch of 1,000
    # events of ordinary size is ~300 KB.
    max_body_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        validation_alias="CONTACTO_WEB_MAX_BODY_BYTES",
    )
    # Which requests get an `http.request` log line (method, path, status, duration, request
    # id): `errors` (status >= 400, or slower than slow_request_ms), `all`, `off`. A line for
    # every request costs about 0.4 ms of CPU, 40 % of a GET of an account (docs/performance.md).
    access_log: AccessLog = Field(AccessLog.ERRORS, validation_alias="CONTACTO_WEB_ACCESS_LOG")
    slow_request_ms: float = Field(250.0, ge=0, validation_alias="CONTACTO_WEB_SLOW_REQUEST_MS")
    # An accepted bearer token is remembered this long by each web worker (0: never), so that
    # a request needs no query to check it; a revocation still applies from the next request
    # (web/token_cache.py).
    token_cache_s: float = Field(60.0, ge=0, le=3600, validation_alias="CONTACTO_WEB_TOKEN_CACHE_S")
    # On SIGTERM: requests in progress get this long to finish, then connections are closed.
    shutdown_timeout_s: int = Field(5, ge=0, le=300, validation_alias="CONTACTO_WEB_SHUTDOWN_S")
    # --- the billing console (web/console/) ------------------------------------------------------
    # Behind HTTPS (a TLS-terminating proxy): session cookies get `Secure` and the `__Host-`
    # prefix. Off by default because the default bind is plain HTTP on loopback.
    console_secure_cookie: bool = Field(False, validation_alias="CONTACTO_CONSOLE_SECURE_COOKIE")
    # A console session ends after this long without a request.
    console_session_idle_s: int = Field(
        1800, ge=60, le=86_400, validation_alias="CONTACTO_CONSOLE_SESSION_IDLE_S"
    )
    # Failed logins one client address may make per window, whatever usernames it tries (the
    # per-account lockout alone does not stop one address trying many accounts).
    console_address_max_failures: int = Field(
        20, ge=1, le=10_000, validation_alias="CONTACTO_CONSOLE_ADDRESS_MAX_FAILURES"
    )
    console_address_window_s: int = Field(
        900, ge=1, le=86_400, validation_alias="CONTACTO_CONSOLE_ADDRESS_WINDOW_S"
    )
    # Stripe.js Elements on the Billing page (PAYMENT_GATEWAY=stripe); public by design.
    stripe_publishable_key: str | None = Field(None, validation_alias="STRIPE_PUBLISHABLE_KEY")
    # Where the console loads Stripe.js from (its origin is allowed by the pages' CSP); tests
    # point it at localstripe's double.
    stripe_js_url: str = Field(
        "https://js.stripe.com/v3/",
        pattern=r"^https?://[^/\s]+/\S*$",
        validation_alias="CONTACTO_STRIPE_JS_URL",
    )


# Their values may carry a password: an error names the variable, never echoes the value.
_NOT_ECHOED = ("URL", "KEY", "PASSWORD", "SECRET", "TOKEN")


def settings_problem(exc: ValidationError) -> str:
    """One line naming each variable that is wrong, and why (Settings' ValidationError)."""
    parts = []
    for error in exc.errors():
        variable = ".".join(str(part) for part in error["loc"]) or "settings"
        # Our validators' messages read as "must be …": after the name, they make a sentence.
        reason = error["msg"].removeprefix("Value error, ")
        if reason.startswith("must "):
            parts.append(f"{variable} {reason}")
            continue
        reason = reason[:1].lower() + reason[1:]
        given = error.get("input")
        if isinstance(given, str) and not any(word in variable for word in _NOT_ECHOED):
            parts.append(f"{variable}={given!r}: {reason}")
        else:
            parts.append(f"{variable}: {reason}")
    return "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


@lru_cache(maxsize=1)
def get_web_settings() -> WebSettings:
    return WebSettings()
