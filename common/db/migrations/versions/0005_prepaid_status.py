"""The prepaid rule and the ladder, kept on the account row where a waiting debit can see them.

* `accounts.auto_run_id`: the automatic run in flight (pending or failing). The debit statement
  used to ask `EXISTS (SELECT ... FROM recharge_runs ...)`, which is evaluated on the
  statement's snapshot: a debit that waited on the account lock while the run's last
  transaction committed still saw the run in flight, and started nothing. A column of the
  locked row is re-read after the wait like the balance is.
* `accounts.suspended_reason`: why an account is suspended. `ladder`: the 0 % attempt failed
  with the balance at or below 0; `no_auto_recharge`: the balance reached 0 with auto-recharge
  off (prepaid: no credit). The second comes back when auto-recharge is switched on again.
* `recharge_runs.ladder_superseded`: a successful charge reset the ladder after this run's
  attempt failed and before the retry worker counted it; the failure then counts for nothing.
* `account_history`: append-only, one row per change of an account's ladder or status, with
  its cause: what `audit` and the chaos run check the account against, and what support reads
  to answer "why is this account suspended?".

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from common.db.script import execute_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE accounts ADD COLUMN auto_run_id bigint;
UPDATE accounts a SET auto_run_id = r.id
FROM recharge_runs r
WHERE r.account_id = a.id AND r.kind = 'auto' AND r.state IN ('pending', 'failing');

ALTER TABLE accounts ADD COLUMN suspended_reason text
    CHECK (suspended_reason IN ('ladder', 'no_auto_recharge'));
UPDATE accounts SET suspended_reason = 'ladder' WHERE status = 'suspended';
ALTER TABLE accounts ADD CONSTRAINT accounts_suspended_reason
    CHECK ((status = 'suspended') = (suspended_reason IS NOT NULL));

ALTER TABLE recharge_runs ADD COLUMN ladder_superseded boolean NOT NULL DEFAULT false;

CREATE TABLE account_history (
    id               bigserial PRIMARY KEY,
    account_id       text NOT NULL,
    -- ladder.armed, ladder.reset, ladder.suspended, prepaid.suspended, account.reactivated
    cause            text NOT NULL,
    retry_tier       smallint NOT NULL CHECK (retry_tier BETWEEN 0 AND 4),
    status           text NOT NULL CHECK (status IN ('active', 'suspended')),
    suspended_reason text,
    balance          numeric(20,6) NOT NULL,
    auto_recharge    boolean NOT NULL,
    run_id           bigint,
    charge_id        bigint,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_history_account ON account_history (account_id, id);

CREATE FUNCTION account_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'account_history is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER account_history_append_only
    BEFORE UPDATE OR DELETE ON account_history
    FOR EACH ROW EXECUTE FUNCTION account_history_append_only();
"""

DOWNGRADE = r"""
DROP TABLE account_history;
DROP FUNCTION account_history_append_only();
ALTER TABLE recharge_runs DROP COLUMN ladder_superseded;
ALTER TABLE accounts DROP CONSTRAINT accounts_suspended_reason;
ALTER TABLE accounts DROP COLUMN suspended_reason;
ALTER TABLE accounts DROP COLUMN auto_run_id;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
