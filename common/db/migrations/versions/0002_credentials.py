"""Billing console logins: one per account, temporary or chosen password, attempt counters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from common.db.script import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- One row per account that has ever been given console access. The attempt counters live on
-- the same row so that the check and the count happen under one row lock, in one transaction:
-- concurrent guesses serialize on it and cannot each see "0 failures so far".
CREATE TABLE billing_logins (
    account_id           text PRIMARY KEY REFERENCES accounts (id),
    username             text NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 256),
    password_hash        text NOT NULL
                         CHECK (password_hash ~ '^scrypt(\$[0-9]+){3}(\$[A-Za-z0-9+/]+){2}$'),
    is_temporary         boolean NOT NULL,
    expires_at           timestamptz,
    consumed_at          timestamptz,
    -- derived, so it cannot drift: a consumed temporary password must be replaced first
    must_change_password boolean NOT NULL
                         GENERATED ALWAYS AS (is_temporary AND consumed_at IS NOT NULL) STORED,
    password_set_at      timestamptz NOT NULL,
    failed_attempts      integer NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    window_started_at    timestamptz,
    locked_until         timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- temporary passwords always expire; chosen ones never do
    CHECK (is_temporary = (expires_at IS NOT NULL)),
    CHECK (expires_at IS NULL OR expires_at > password_set_at),
    -- only a temporary password is consumed, and only while it is still valid
    CHECK (consumed_at IS NULL OR (is_temporary AND consumed_at < expires_at)),
    CHECK ((failed_attempts = 0) = (window_started_at IS NULL)),
    CHECK (locked_until IS NULL OR failed_attempts > 0)
);

COMMENT ON TABLE billing_logins IS
    'Billing console login per account. Passwords are stored only as scrypt hashes.';
COMMENT ON COLUMN billing_logins.username IS
    'Login name shown to the customer with the temporary password; stable across re-issues.';
COMMENT ON COLUMN billing_logins.password_hash IS
    'scrypt$n$r$p$salt$key (base64): parameters travel with the hash so they can be raised.';
COMMENT ON COLUMN billing_logins.is_temporary IS
    'Issued by support: valid for one login before expires_at, then must be changed.';
COMMENT ON COLUMN billing_logins.consumed_at IS
    'When the temporary password was used to log in; a second login with it is refused.';
COMMENT ON COLUMN billing_logins.failed_attempts IS
    'Wrong passwords since window_started_at; reset by a right password or a re-issue.';
COMMENT ON COLUMN billing_logins.locked_until IS
    'Attempts are refused before this time (set when failed_attempts reaches the limit).';
"""


def upgrade() -> None:
    execute_script(SCHEMA)


def downgrade() -> None:
    execute_script("DROP TABLE billing_logins")
