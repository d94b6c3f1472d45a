"""The billing console: what the card on file looks like to its owner, and the low-balance alert.

The card's brand, last four digits and expiry are what a customer needs to recognise their
card; they are display data, never enough to charge it (the gateway holds the card). The
alert level is the customer's own; `low_balance_alerted` remembers that the balance is below
it and `balance.low` was emitted, so a crossing is announced once, not once per call.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from common.db.script import execute_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- argon2id hashes (PHC string) from now on; scrypt ones stay valid until their next login.
ALTER TABLE billing_logins DROP CONSTRAINT billing_logins_password_hash_check;
ALTER TABLE billing_logins ADD CONSTRAINT billing_logins_password_hash_check CHECK (
    password_hash ~ '^scrypt(\$[0-9]+){3}(\$[A-Za-z0-9+/]+){2}$'
    OR password_hash ~ '^\$argon2id\$v=19\$m=[0-9]+,t=[0-9]+,p=[0-9]+(\$[A-Za-z0-9+/]+){2}$'
);
COMMENT ON COLUMN billing_logins.password_hash IS
    'argon2id (PHC string), or scrypt$n$r$p$salt$key from before: upgraded at the next login.';

ALTER TABLE accounts
    ADD COLUMN card_brand text CHECK (card_brand ~ '^[a-z_]{1,32}$'),
    ADD COLUMN card_last4 text CHECK (card_last4 ~ '^[0-9]{4}$'),
    ADD COLUMN card_exp_month smallint CHECK (card_exp_month BETWEEN 1 AND 12),
    ADD COLUMN card_exp_year smallint CHECK (card_exp_year BETWEEN 2000 AND 2200),
    ADD COLUMN low_balance_alert numeric(20, 6) CHECK (low_balance_alert > 0),
    ADD COLUMN low_balance_alerted boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN accounts.card_brand IS
    'Brand of the card on file (visa, mastercard, ...), for its owner to recognise it.';
COMMENT ON COLUMN accounts.card_last4 IS 'Last four digits of the card on file (display only).';
COMMENT ON COLUMN accounts.low_balance_alert IS
    'The customer''s low-balance alert level: falling below it emits balance.low.';
COMMENT ON COLUMN accounts.low_balance_alerted IS
    'balance.low was emitted for the current crossing; a credit back above the level re-arms.';
"""

DOWNGRADE = r"""
ALTER TABLE billing_logins DROP CONSTRAINT billing_logins_password_hash_check;
ALTER TABLE billing_logins ADD CONSTRAINT billing_logins_password_hash_check
    CHECK (password_hash ~ '^scrypt(\$[0-9]+){3}(\$[A-Za-z0-9+/]+){2}$') NOT VALID;
ALTER TABLE accounts
    DROP COLUMN card_brand, DROP COLUMN card_last4, DROP COLUMN card_exp_month,
    DROP COLUMN card_exp_year, DROP COLUMN low_balance_alert, DROP COLUMN low_balance_alerted;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
