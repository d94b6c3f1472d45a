"""The recharge domain's SQL: runs, charges, and the account columns only recharges write.

Lock order everywhere: account row, then run row, then charge row. Every function here runs
inside the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from common.accounts.store import ACCOUNT_COLUMNS

# Runs for several accounts in one round trip (forty accounts crossing T in one group commit
# were 120 statements, docs/performance.md "The crossing, third pass"). An account with a run
# of that kind in flight gets none: the partial unique index decides, also between two callers.
# An automatic run is also written on its account row.
INSERT_RUNS = """
WITH runs AS (
    INSERT INTO recharge_runs
        (account_id, kind, trigger, tier, target_amount, recharge_amount, mode, max_charges)
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::smallint[], $5::numeric[], $6::numeric[],
        $7::text[], $8::integer[]
    )
    ON CONFLICT (account_id, kind) WHERE state IN ('pending', 'failing') DO NOTHING
    RETURNING id, account_id, kind
), marked AS (
    UPDATE accounts a SET auto_run_id = runs.id
    FROM runs WHERE a.id = runs.account_id AND runs.kind = 'auto'
)
SELECT id, account_id FROM runs ORDER BY id
"""
# A run and its account, locked in one round trip, account first (the order every path uses):
# the run's row is locked by a sub-select evaluated for the account's row, after the CTE locked
# it. $2 is the run's account when the caller knows it, else it is looked up from the run. The
# run comes back as a composite value (a record of its table's row type), NULL if there is no
# such run on that account.
LOCK_ACCOUNT_AND_RUN = f"""
WITH acct AS MATERIALIZED (
    SELECT {ACCOUNT_COLUMNS}, now() AS db_now
    FROM accounts a
    WHERE a.id = coalesce($2::text, (SELECT account_id FROM recharge_runs WHERE id = $1))
    FOR UPDATE OF a
)
SELECT acct.*,
       (SELECT r FROM recharge_runs r WHERE r.id = $1 AND r.account_id = acct.id
        FOR UPDATE OF r) AS run
FROM acct
"""
# A run leaves flight; an automatic one also leaves its account row ($4: the run's kind).
FINISH_RUN = """
WITH finished AS (
    UPDATE recharge_runs SET state = $2, finished_at = now(), error = $3 WHERE id = $1
    RETURNING account_id
)
UPDATE accounts a SET auto_run_id = NULL
FROM finished WHERE a.id = finished.account_id AND $4 = 'auto'
"""
# 'failing' keeps the run in flight until the retry worker counted the failure.
MARK_FAILING = "UPDATE recharge_runs SET state = 'failing' WHERE id = $1"
SUPERSEDE_FAILING = """
UPDATE recharge_runs SET ladder_superseded = true
WHERE account_id = $1 AND kind = 'auto' AND state = 'failing'
"""
# The run's pending charge, its call counted, if it has one; with the run's charge statistics
# either way (all the charge's columns NULL when there is none). One round trip for what a
# run's every step asks first.
RESUME_PENDING_CHARGE = """
WITH resumed AS (
    UPDATE charges SET gateway_calls = gateway_calls + 1, updated_at = now()
    WHERE run_id = $1 AND status = 'pending'
    RETURNING *
)
SELECT resumed.*, stats.succeeded, stats.last_seq
FROM (
    SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           coalesce(max(seq), 0) AS last_seq
    FROM charges WHERE run_id = $1
) AS stats
LEFT JOIN resumed ON true
"""
INSERT_CHARGE = """
INSERT INTO charges (run_id, account_id, seq, amount, currency, idempotency_key, payment_method,
                     status, failure_code, failure_message, gateway_calls)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
RETURNING *
"""
# A charge's outcome, recorded once: no row when it is no longer pending (a duplicate delivery
# recorded it first; the row lock makes the second wait, then see the first's outcome).
# ... and, for a success, the run's charge statistics after it (as RESUME_PENDING_CHARGE gives
# them), for the run's next step: the sub-selects read the snapshot from before the
# update, where this charge was still pending.
MARK_SUCCEEDED = """
WITH marked AS (
    UPDATE charges SET status = 'succeeded', gateway_ref = $2, updated_at = now()
    WHERE id = $1 AND status = 'pending'
    RETURNING run_id
)
SELECT (SELECT count(*) FROM charges c
        WHERE c.run_id = marked.run_id AND c.status = 'succeeded') + 1 AS succeeded,
       (SELECT max(seq) FROM charges c WHERE c.run_id = marked.run_id) AS last_seq
FROM marked
"""
MARK_FAILED = """
UPDATE charges SET status = 'failed', failure_code = $2, failure_message = $3, gateway_ref = $4,
                   updated_at = now()
WHERE id = $1 AND status = 'pending'
RETURNING id
"""
LAST_FAILED_CHARGE = """
SELECT id, amount, failure_code, failure_message, updated_at, idempotency_key
FROM charges WHERE run_id = $1 AND status = 'failed'
ORDER BY seq DESC LIMIT 1
"""
CUSTOMER_OF = "SELECT gateway_customer_id FROM accounts WHERE id = $1"
# The card's display details ($4-$7) are NULL when whoever attached it did not know them
# (the CLI attaches a payment method by id).
SET_CARD = """
UPDATE accounts SET payment_method = $2, gateway_customer_id = $3, card_brand = $4,
                    card_last4 = $5, card_exp_month = $6, card_exp_year = $7, updated_at = now()
WHERE id = $1
"""
# The gateway customer made for a card setup, kept unless one was kept meanwhile.
KEEP_CUSTOMER = """
UPDATE accounts SET gateway_customer_id = $2, updated_at = now()
WHERE id = $1 AND gateway_customer_id IS NULL
"""
AUTO_RECHARGE_OFF = """
UPDATE accounts SET auto_recharge_enabled = false, updated_at = now() WHERE id = $1
"""
AUTO_RECHARGE_ON = """
UPDATE accounts SET auto_recharge_enabled = true, balance_amount = $2, recharge_amount = $3,
                    recharge_mode = $4, updated_at = now()
WHERE id = $1
"""
SET_MAX_RECHARGE = """
UPDATE accounts SET max_recharge_amount = $2, updated_at = now() WHERE id = $1
"""
RUN_SUMMARY = """
SELECT r.id, r.account_id, r.kind, r.state, r.error, a.balance, a.status
FROM recharge_runs r JOIN accounts a ON a.id = r.account_id
WHERE r.id = $1
"""
RUN_CHARGES = """
SELECT amount, status, idempotency_key, failure_code FROM charges WHERE run_id = $1 ORDER BY seq
"""


async def lock_run(
    conn: asyncpg.Connection[Any], run_id: int, *, account_id: str | None = None
) -> tuple[asyncpg.Record | None, asyncpg.Record | None]:
    """Lock a recharge run and its account, account first (the order every path uses).

    `account_id`: the run's account when the caller knows it (a run never changes account),
    which saves the look-up. (None, None) when there is no such run."""
    row = await conn.fetchrow(LOCK_ACCOUNT_AND_RUN, run_id, account_id)
    if row is None or row["run"] is None:
        return None, None
    return row, row["run"]


async def finish_run(
    conn: asyncpg.Connection[Any], run: asyncpg.Record, state: str, error: str | None = None
) -> None:
    """A run leaves flight: its row, and the account's pointer to it for an automatic one."""
    await conn.execute(FINISH_RUN, run["id"], state, error, run["kind"])


async def insert_charge(
    conn: asyncpg.Connection[Any],
    *,
    run_id: int,
    account_id: str,
    seq: int,
    amount: Decimal,
    currency: str,
    idempotency_key: str,
    payment_method: str | None,
    failure: tuple[str, str] | None,
) -> asyncpg.Record:
    """A pending charge (to be sent), or one already failed before any call (`failure`)."""
    row: asyncpg.Record = await conn.fetchrow(
        INSERT_CHARGE,
        run_id,
        account_id,
        seq,
        amount,
        currency,
        idempotency_key,
        payment_method,
        "pending" if failure is None else "failed",
        None if failure is None else failure[0],
        None if failure is None else failure[1][:500],
        1 if failure is None else 0,
    )
    return row


async def mark_failed(
    conn: asyncpg.Connection[Any],
    charge_id: int,
    code: str,
    message: str,
    gateway_ref: str | None,
) -> bool:
    """False when the charge was no longer pending: nothing changed."""
    marked = await conn.fetchval(MARK_FAILED, charge_id, code, message[:500], gateway_ref)
    return marked is not None


def failed_at(charge: asyncpg.Record) -> datetime:
    at: datetime = charge["updated_at"]
    return at


# --- the reconciler (common/recharge/reconcile.py) -------------------------------------------
# One reconciler at a time, whatever the number of relays: the lock dies with the transaction.
TRY_RECONCILE_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
# Runs in flight with no progress for $1 seconds: not created, charged (every step of a charge
# writes its updated_at) or re-published since. SKIP LOCKED: a run whose row a worker holds is
# making progress, and the reconciler never waits on a worker's lock (nor can deadlock with one).
STALE_RUNS = """
SELECT r.id, r.account_id, r.state
FROM recharge_runs r
WHERE r.state IN ('pending', 'failing')
  AND greatest(r.created_at, r.reconciled_at,
               (SELECT max(c.updated_at) FROM charges c WHERE c.run_id = r.id))
      < now() - make_interval(secs => $1)
ORDER BY r.id
LIMIT $2
FOR UPDATE OF r SKIP LOCKED
"""
# Armed accounts whose re-check is overdue by $1 seconds: active, auto-recharge on, nothing in
# flight, the armed level crossed ($3: the policy's fraction of T for tiers 1..4), the retry
# interval ($2 seconds) passed since the failure, and not re-published since. Such an account
# waits for a re-check that only a lost message could have failed to run.
STALE_RECHECKS = """
SELECT a.id
FROM accounts a
WHERE a.retry_tier > 0
  AND a.status = 'active'
  AND a.auto_recharge_enabled
  AND a.auto_run_id IS NULL
  AND a.balance <= a.balance_amount * ($3::numeric[])[a.retry_tier]
  AND greatest(coalesce(a.last_failure_at + make_interval(secs => $2), '-infinity'),
               a.recheck_reconciled_at)
      < now() - make_interval(secs => $1)
ORDER BY a.id
LIMIT $4
FOR UPDATE OF a SKIP LOCKED
"""
STAMP_RUNS = "UPDATE recharge_runs SET reconciled_at = now() WHERE id = ANY($1::bigint[])"
STAMP_RECHECKS = "UPDATE accounts SET recheck_reconciled_at = now() WHERE id = ANY($1::text[])"


# --- the console's authentication of a failed charge (common/recharge/authentication.py) -----
# The account's latest charge: the one awaiting the customer when it failed for
# authentication_required (as the console shows it, common/accounts/support.py).
LATEST_CHARGE = """
SELECT id, run_id, account_id, amount, currency, status, failure_code, gateway_ref,
       payment_method, idempotency_key
FROM charges WHERE account_id = $1 ORDER BY id DESC LIMIT 1
"""
CHARGE = """
SELECT id, run_id, account_id, amount, currency, status, failure_code, gateway_ref,
       payment_method, idempotency_key
FROM charges WHERE id = $1
"""
# Started again after a refusal or an expiry: the same row, open again. Never once credited
# (no row returned then).
START_AUTHENTICATION = """
INSERT INTO charge_authentications (charge_id, account_id, payment_intent)
VALUES ($1, $2, $3)
ON CONFLICT (charge_id) DO UPDATE
    SET started_at = now(), checked_at = NULL, settled_at = NULL, outcome = NULL
    WHERE charge_authentications.outcome IS DISTINCT FROM 'succeeded'
RETURNING charge_id
"""
ACCOUNT_AUTHENTICATION = """
SELECT * FROM charge_authentications WHERE account_id = $1 ORDER BY started_at DESC LIMIT 1
"""
AUTHENTICATION = "SELECT * FROM charge_authentications WHERE charge_id = $1"
LOCK_AUTHENTICATION = "SELECT * FROM charge_authentications WHERE charge_id = $1 FOR UPDATE"
SETTLE_AUTHENTICATION = """
UPDATE charge_authentications SET settled_at = now(), outcome = $2, credited_charge_id = $3
WHERE charge_id = $1
"""
# An open row that a refusal or the sweep's give-up closes; a success closes it under its lock.
CLOSE_AUTHENTICATION = """
UPDATE charge_authentications SET settled_at = now(), outcome = $2
WHERE charge_id = $1 AND settled_at IS NULL
"""
CHARGE_BY_KEY = "SELECT id, run_id FROM charges WHERE idempotency_key = $1"
# The confirmed payment is a charge of its own, in a manual run finished at once: the failed
# charge stays failed (it is history: the off-session attempt did fail), and the unique
# idempotency key authenticate-<failed charge> makes a second credit impossible.
INSERT_AUTHENTICATED_RUN = """
INSERT INTO recharge_runs
    (account_id, kind, trigger, tier, recharge_amount, mode, max_charges, state, finished_at)
VALUES ($1, 'manual', 'authentication', $2, $3, 'repeat', 1, 'succeeded', now())
RETURNING *
"""
INSERT_AUTHENTICATED_CHARGE = """
INSERT INTO charges (run_id, account_id, seq, amount, currency, idempotency_key, payment_method,
                     status, gateway_ref, gateway_calls)
VALUES ($1, $2, 1, $3, $4, $5, $6, 'succeeded', $7, 0)
RETURNING id
"""
# The sweep's claim: open confirmations started over $1 seconds ago and not asked about for as
# long, stamped so that another relay (or the next pass) leaves them alone for $1 seconds.
# `overdue`: started over $3 seconds ago, time to give up unless Stripe says it succeeded.
CLAIM_UNSETTLED_AUTHENTICATIONS = """
UPDATE charge_authentications a SET checked_at = now()
FROM (
    SELECT charge_id FROM charge_authentications
    WHERE settled_at IS NULL
      AND started_at < now() - make_interval(secs => $1)
      AND coalesce(checked_at, '-infinity') < now() - make_interval(secs => $1)
    ORDER BY started_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) due
WHERE a.charge_id = due.charge_id
RETURNING a.charge_id, a.account_id, a.started_at < now() - make_interval(secs => $3) AS overdue
"""
