"""The console's on-session confirmation of a charge that failed with authentication_required
(PAYMENT_GATEWAY=stripe, common/recharge/authentication.py).

A row is written when the customer starts confirming the failed charge's PaymentIntent with
Stripe.js, before its client secret reaches the browser: from then on Stripe may take the money
without us being told (the browser closed, the network dropped), and this row is how the relay's
sweep knows to ask Stripe. It is settled once: `succeeded` with the charge that credited the
account, `not_confirmed` (the bank refused, or the customer gave up; starting again reopens it),
or `expired` (nobody confirmed within CONTACTO_AUTHENTICATION_GIVE_UP_AFTER_S).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from common.db.script import execute_script

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE charge_authentications (
    charge_id          bigint PRIMARY KEY REFERENCES charges (id),
    account_id         text NOT NULL REFERENCES accounts (id),
    payment_intent     text NOT NULL CHECK (payment_intent ~ '^pi_[A-Za-z0-9_]+$'),
    started_at         timestamptz NOT NULL DEFAULT now(),
    checked_at         timestamptz,
    settled_at         timestamptz,
    outcome            text CHECK (outcome IN ('succeeded', 'not_confirmed', 'expired')),
    credited_charge_id bigint UNIQUE REFERENCES charges (id),
    CHECK ((settled_at IS NULL) = (outcome IS NULL)),
    CHECK ((outcome = 'succeeded') = (credited_charge_id IS NOT NULL))
);
CREATE INDEX charge_authentications_open ON charge_authentications (started_at)
    WHERE settled_at IS NULL;
CREATE INDEX charge_authentications_account ON charge_authentications (account_id);

COMMENT ON TABLE charge_authentications IS
    'A failed authentication_required charge whose PaymentIntent the customer started to confirm '
    'on the console; written before the client secret went to the browser.';
COMMENT ON COLUMN charge_authentications.checked_at IS
    'Last time the relay''s sweep asked Stripe about this unsettled confirmation.';
COMMENT ON COLUMN charge_authentications.credited_charge_id IS
    'The succeeded charge (idempotency key authenticate-<charge_id>) that credited the account.';
"""

DOWNGRADE = r"""
DROP TABLE charge_authentications;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
