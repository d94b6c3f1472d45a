"""Accounts, the append-only ledger, usage events, rejected usage, recharge runs, charges, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from common.db.script import execute_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = r"""
-- Money is NUMERIC(20,6) everywhere: 14 integer digits, 6 decimals, never a float.

CREATE TABLE accounts (
    id                    text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    currency              char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- balance == sum(ledger_entries.amount) for the account, always (checked by `audit`).
    -- It may go negative: usage that already happened is recorded even when it overdraws.
    balance               numeric(20,6) NOT NULL DEFAULT 0,
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    suspended_at          timestamptz,
    auto_recharge_enabled boolean NOT NULL DEFAULT false,
    balance_amount        numeric(20,6) CHECK (balance_amount > 0),      -- T
    recharge_amount       numeric(20,6) CHECK (recharge_amount > 0),     -- R
    recharge_mode         text NOT NULL DEFAULT 'repeat' CHECK (recharge_mode IN ('repeat', 'single')),
    -- support may raise the largest single recharge for one account (NULL: the global setting)
    max_recharge_amount   numeric(20,6) CHECK (max_recharge_amount > 0),
    -- 0 = normal; 1..4 = a failed attempt armed the next try at 75/50/25/0 % of T
    retry_tier            smallint NOT NULL DEFAULT 0 CHECK (retry_tier BETWEEN 0 AND 4),
    last_failure_at       timestamptz,
    gateway_customer_id   text,
    payment_method        text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT auto_recharge_enabled OR (balance_amount IS NOT NULL AND recharge_amount IS NOT NULL)),
    CHECK ((retry_tier = 0) = (last_failure_at IS NULL)),
    CHECK ((status = 'suspended') = (suspended_at IS NOT NULL))
);

CREATE TABLE ledger_entries (
    id            bigserial PRIMARY KEY,
    account_id    text NOT NULL REFERENCES accounts (id),
    amount        numeric(20,6) NOT NULL CHECK (amount <> 0),   -- signed: debits < 0
    balance_after numeric(20,6) NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('usage', 'recharge', 'credit')),
    -- usage: the event id; recharge: the charge id; credit: the support reference.
    reference     text NOT NULL,
    memo          text,            -- why support credited, or what was charged
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- an event is debited once, a charge credited once: the database refuses a second row
    UNIQUE (kind, reference)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, id);

CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();

CREATE TABLE usage_events (
    event_id    text PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 200),
    account_id  text NOT NULL REFERENCES accounts (id),
    amount      numeric(20,6) NOT NULL CHECK (amount > 0),
    occurred_at timestamptz NOT NULL,
    kind        text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rejected_usage (
    id          bigserial PRIMARY KEY,
    -- hash of (actor, payload, reason): a redelivered bad message is kept once
    fingerprint text NOT NULL UNIQUE,
    message_id  text,
    actor_name  text,
    event_id    text,
    account_id  text,
    reason      text NOT NULL,
    payload     text NOT NULL,   -- the raw JSON as received (text: jsonb refuses \u0000)
    rejected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejected_usage_time ON rejected_usage (rejected_at);

CREATE TABLE recharge_runs (
    id              bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts (id),
    kind            text NOT NULL CHECK (kind IN ('auto', 'manual')),
    trigger         text NOT NULL,     -- threshold, tier, card, manual
    tier            smallint NOT NULL CHECK (tier BETWEEN 0 AND 4),
    -- pending: charging; failing: an attempt failed and the retry worker has not yet armed
    -- the next tier (still in flight, so no other run can start in between); then final.
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'failing', 'succeeded', 'failed', 'capped')),
    target_amount   numeric(20,6),     -- T when the run started (auto runs)
    recharge_amount numeric(20,6) NOT NULL CHECK (recharge_amount > 0),
    mode            text NOT NULL DEFAULT 'repeat' CHECK (mode IN ('repeat', 'single')),
    max_charges     integer NOT NULL CHECK (max_charges >= 1),
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CHECK ((state IN ('pending', 'failing')) = (finished_at IS NULL))
);
-- At most one automatic and one manual run in flight per account, enforced here.
CREATE UNIQUE INDEX recharge_runs_in_flight ON recharge_runs (account_id, kind)
    WHERE state IN ('pending', 'failing');

CREATE TABLE charges (
    id              bigserial PRIMARY KEY,
    run_id          bigint NOT NULL REFERENCES recharge_runs (id),
    account_id      text NOT NULL REFERENCES accounts (id),
    seq             integer NOT NULL CHECK (seq >= 1),
    amount          numeric(20,6) NOT NULL CHECK (amount > 0),
    currency        char(3) NOT NULL,
    -- stored before the gateway is called; the gateway dedupes on it
    idempotency_key text NOT NULL UNIQUE,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'succeeded', 'failed', 'error')),
    payment_method  text,
    gateway_ref     text,
    failure_code    text,
    failure_message text,
    gateway_calls   integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, seq)
);
CREATE UNIQUE INDEX charges_one_pending_per_run ON charges (run_id) WHERE status = 'pending';
CREATE INDEX charges_account ON charges (account_id, id);

CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    destination text NOT NULL CHECK (destination IN ('queue', 'stream')),
    target      text NOT NULL,        -- queue name, or event type for stream rows
    actor_name  text,
    payload     text NOT NULL,        -- JSON
    deliver_at  timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    CHECK ((destination = 'queue') = (actor_name IS NOT NULL))
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
"""


def upgrade() -> None:
    execute_script(SCHEMA)


def downgrade() -> None:
    execute_script(
        "DROP TABLE outbox, charges, recharge_runs, rejected_usage, usage_events, "
        "ledger_entries, accounts CASCADE; DROP FUNCTION ledger_entries_append_only()"
    )
