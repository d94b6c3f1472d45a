"""Bearer tokens of the account API (`contacto-billing api-tokens create|list|revoke`).

A token is `cbt_<selector>_<secret>`: the selector (16 hex digits) finds the row, the secret
(32 random bytes, base64url) is never stored, only its SHA-256. A 256-bit random secret needs
no slow hash or salt: nothing can be guessed, so a plain digest is as strong as the secret,
and checking it costs microseconds on every request. The comparison is in constant time.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from common.db.script import execute_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    selector     text NOT NULL UNIQUE CHECK (selector ~ '^[0-9a-f]{16}$'),
    secret_hash  bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    scopes       text[] NOT NULL
                 CHECK (cardinality(scopes) >= 1
                        AND scopes <@ ARRAY['accounts:read', 'usage:write']::text[]),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CHECK (last_used_at IS NULL OR last_used_at >= created_at),
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);
-- A name is taken while its token is live; once revoked, the name can be issued again.
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;

COMMENT ON TABLE api_tokens IS
    'Bearer tokens of the account API. The secret part is stored only as its SHA-256.';
COMMENT ON COLUMN api_tokens.name IS
    'Who holds the token (e.g. upstream-platform); `api-tokens revoke NAME` names it.';
COMMENT ON COLUMN api_tokens.selector IS
    'Public part of the token (cbt_<selector>_<secret>): finds the row without the secret.';
COMMENT ON COLUMN api_tokens.secret_hash IS
    'SHA-256 of the secret part, compared in constant time; the token itself is shown once.';
COMMENT ON COLUMN api_tokens.scopes IS
    'accounts:read (account, ledger, charges), usage:write (POST /v1/usage).';
COMMENT ON COLUMN api_tokens.last_used_at IS
    'Last successful authentication, kept to the minute (written at most once a minute).';
COMMENT ON COLUMN api_tokens.revoked_at IS
    'Set by `api-tokens revoke`: the token is refused from that moment on.';
"""

DOWNGRADE = "DROP TABLE api_tokens"


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
