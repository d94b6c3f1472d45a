"""Recharge settings of an account: the card on file, auto-recharge (T, R, mode), and the
per-account maximum support can raise."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from common.accounts.status import enforce_prepaid
from common.accounts.store import AccountError, lock_account, require_account, snapshot
from common.gateway import PaymentGateway
from common.gateway.stripe_gateway import StripeGateway
from common.money import check_fits_minor_unit, format_amount
from common.recharge import store
from common.recharge.config import PolicyConfig
from common.recharge.limits import LimitError, check_recharge_amount, effective_max
from common.recharge.policy import RechargeMode, StartRecharge, armed_level, decide_recharge
from common.recharge.runs import start_auto_run
from config.settings import Settings


@dataclass(frozen=True, slots=True)
class CardDisplay:
    """What the card's owner recognises it by: never enough to charge it."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True, slots=True)
class CardResult:
    customer_id: str
    payment_method: str
    attempt_run_id: int | None


async def attach_card(
    conn: asyncpg.Connection[Any],
    gw: PaymentGateway,
    account_id: str,
    payment_method: str,
    settings: Settings,
    display: CardDisplay | None = None,
) -> CardResult:
    """Put a card on file; on a failing or suspended account, fire an attempt at once."""
    row = await conn.fetchrow(store.CUSTOMER_OF, account_id)
    if row is None:
        raise AccountError(f"unknown account {account_id!r}")
    # The gateway call happens outside the transaction; attaching twice is harmless.
    attached = await gw.attach_card(
        account_id=account_id, customer_id=row["gateway_customer_id"], payment_method=payment_method
    )
    async with conn.transaction():
        account = await require_account(conn, account_id)
        await conn.execute(
            store.SET_CARD,
            account_id,
            attached.payment_method,
            attached.customer_id,
            *(
                (display.brand, display.last4, display.exp_month, display.exp_year)
                if display is not None
                else (None, None, None, None)
            ),
        )
        run_id = None
        failing = account["retry_tier"] > 0 or account["status"] == "suspended"
        if failing and account["auto_recharge_enabled"] and not account["auto_run_in_flight"]:
            # The armed tier fires now, whatever the balance: the customer just fixed the card.
            tier = account["retry_tier"]
            decision = StartRecharge(tier=tier, level=armed_level(account["balance_amount"], tier))
            run_id = await start_auto_run(
                conn, account, decision, PolicyConfig.from_settings(settings), trigger="card"
            )
    return CardResult(attached.customer_id, attached.payment_method, run_id)


async def set_auto_recharge(
    conn: asyncpg.Connection[Any],
    account_id: str,
    settings: Settings,
    *,
    balance_amount: Decimal | None,
    recharge_amount: Decimal | None,
    mode: RechargeMode = "repeat",
) -> int | None:
    """Enable (both amounts) or disable (None, None). Returns a run id when the balance is
    already below the new threshold: the recharge starts now, not at the next call.

    Prepaid: switched off with the balance at or below 0 and nothing in flight, the account is
    suspended at once; switched on again, an account that only this had suspended comes back.
    """
    async with conn.transaction():
        account = await require_account(conn, account_id)
        if balance_amount is None or recharge_amount is None:
            await conn.execute(store.AUTO_RECHARGE_OFF, account_id)
            await enforce_prepaid(conn, account, auto_recharge_enabled=False)
            return None
        check_fits_minor_unit(balance_amount, account["currency"], field="balance amount")
        check_recharge_amount(
            recharge_amount,
            account["currency"],
            minimum=settings.min_recharge_amount,
            global_max=settings.max_recharge_amount,
            account_max=account["max_recharge_amount"],
        )
        await conn.execute(
            store.AUTO_RECHARGE_ON, account_id, balance_amount, recharge_amount, mode
        )
        await enforce_prepaid(conn, account, auto_recharge_enabled=True)
        updated = await lock_account(conn, account_id)
        assert updated is not None
        config = PolicyConfig.from_settings(settings)
        decision = decide_recharge(
            snapshot(updated), now=updated["db_now"], retry_min_interval=config.retry_min_interval
        )
        if isinstance(decision, StartRecharge):
            return await start_auto_run(conn, updated, decision, config)
        return None


async def set_max_recharge(
    conn: asyncpg.Connection[Any], account_id: str, amount: Decimal | None, settings: Settings
) -> None:
    """Support raises (or resets, with None) the largest single recharge of one account.

    A maximum below the account's own Recharge Amount is refused: every automatic attempt
    would then be refused too, and the account would walk the ladder to suspension for an
    amount nobody can charge.
    """
    async with conn.transaction():
        account = await require_account(conn, account_id)
        if amount is not None:
            check_fits_minor_unit(amount, account["currency"], field="maximum")
        maximum = effective_max(settings.max_recharge_amount, amount)
        recharge = account["recharge_amount"]
        if account["auto_recharge_enabled"] and recharge is not None and recharge > maximum:
            raise LimitError(
                f"account {account_id!r} recharges {format_amount(recharge)} "
                f"{account['currency']} automatically, above the new maximum of "
                f"{format_amount(maximum)}: lower its Recharge Amount first "
                "(contacto-billing accounts auto-recharge)"
            )
        await conn.execute(store.SET_MAX_RECHARGE, account_id, amount)


async def start_card_setup(
    conn: asyncpg.Connection[Any], gw: StripeGateway, account_id: str
) -> str:
    """The client secret of a SetupIntent for the account's new card (PAYMENT_GATEWAY=stripe);
    the account's gateway customer is created and kept now if it had none."""
    row = await conn.fetchrow(store.CUSTOMER_OF, account_id)
    if row is None:
        raise AccountError(f"unknown account {account_id!r}")
    setup = await gw.create_setup_intent(
        account_id=account_id, customer_id=row["gateway_customer_id"]
    )
    await conn.execute(store.KEEP_CUSTOMER, account_id, setup.customer_id)
    return setup.client_secret


async def finish_card_setup(
    conn: asyncpg.Connection[Any],
    gw: StripeGateway,
    account_id: str,
    setup_intent_id: str,
    settings: Settings,
) -> CardResult:
    """The card a SetupIntent of this account's customer saved becomes the card on file, as
    `attach_card` puts any card there (and with its attempt on a failing account)."""
    customer_id = await conn.fetchval(store.CUSTOMER_OF, account_id)
    if customer_id is None:
        raise AccountError(f"account {account_id!r} has started no card setup")
    card = await gw.setup_intent_card(setup_intent_id, customer_id)
    display = (
        CardDisplay(card.brand, card.last4, card.exp_month, card.exp_year)
        if card.brand and card.last4 and card.exp_month and card.exp_year
        else None
    )
    return await attach_card(conn, gw, account_id, card.payment_method, settings, display)
