"""Progress stamps for the reconciler (common/recharge/reconcile.py).

The reconciler re-publishes the message of unfinished work whose message a broker lost (a
flushed or failed-over Redis): a run still `pending` (run_recharge), a run still `failing`
(record_failure), an armed account whose re-check is overdue (recheck_tier). It stamps what it
re-published in the same transaction as the outbox row it writes, so that the next pass waits
CONTACTO_RECONCILE_AFTER_S again instead of sending the message again at once.

* `recharge_runs.reconciled_at`: when the reconciler last re-published this run's message.
  A run's progress is the latest of its creation, its charges' updates and this stamp.
* `accounts.recheck_reconciled_at`: when it last re-published the account's re-check. Not
  indexed, so writing it, like a debit, stays a HOT update.
* `accounts_armed`: the armed accounts (tier 1 to 4), the only ones a re-check can be owed to,
  found without reading the table. Its predicate's column changes only when the ladder moves,
  so debits stay HOT updates.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from common.db.script import execute_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE recharge_runs ADD COLUMN reconciled_at timestamptz;
ALTER TABLE accounts ADD COLUMN recheck_reconciled_at timestamptz;
CREATE INDEX accounts_armed ON accounts (id) WHERE retry_tier > 0;

COMMENT ON COLUMN recharge_runs.reconciled_at IS
    'Last time the reconciler re-published this unfinished run''s message (its broker lost it).';
COMMENT ON COLUMN accounts.recheck_reconciled_at IS
    'Last time the reconciler re-published this armed account''s overdue re-check.';
"""

DOWNGRADE = r"""
DROP INDEX accounts_armed;
ALTER TABLE accounts DROP COLUMN recheck_reconciled_at;
ALTER TABLE recharge_runs DROP COLUMN reconciled_at;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
