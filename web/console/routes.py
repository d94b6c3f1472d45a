"""The console's pages and the two small JSON endpoints their scripts poll.

Every handler starts from `_page` (the session, logged in, password changed) or from the login
form; a POST is refused (403) unless it carries the session's CSRF token. A customer's account
is always the session's: no route takes an account id, and a recharge run or charge named in a
URL is looked up among the session account's own.
"""

from __future__ import annotations

import asyncio
import csv
import inspect
import io
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Final

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as FastApiPath
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from common.accounts.store import AccountError
from common.accounts.support import (
    MAX_CURSOR,
    charges_page_newest,
    console_view,
    ledger_page,
    ledger_page_newest,
    set_low_balance_alert,
    show_account_state,
)
from common.credentials import logins, passwords
from common.credentials.logins import USERNAME_PREFIX, CredentialsError
from common.gateway.base import CardRejected, GatewayError
from common.gateway.simulated import SimulatedGateway
from common.gateway.stripe_gateway import StripeGateway
from common.money import format_amount, parse_amount
from common.recharge.authentication import (
    AlreadySettled,
    Credited,
    NotConfirmed,
    ReadyToSettle,
    Refusal,
    Refused,
    StillPending,
)
from common.recharge.authentication import begin as begin_authentication
from common.recharge.authentication import settle_account as settle_authentication
from common.recharge.limits import LimitError, effective_max
from common.recharge.manual import FINAL_RUN_STATES, request_manual_recharge, run_summary
from common.recharge.policy import RechargeMode
from common.recharge.settings import (
    attach_card,
    finish_card_setup,
    set_auto_recharge,
    start_card_setup,
)
from web.console.cards import BRAND_NAMES, CardInputError, parse_card
from web.console.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    address_limit,
    csrf_ok,
    unknown_username_limit,
)
from web.console.sessions import Session, SessionStore
from web.resources import Resources, resources

log = structlog.get_logger("web.console")

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

COOKIE: Final = "contacto_session"
SECURE_COOKIE: Final = "__Host-contacto_session"
HISTORY_PAGE: Final = 25
GENERIC_LOGIN_ERROR: Final = "Incorrect username or password."
TOO_MANY: Final = "Too many sign-in attempts. Please wait 15 minutes and try again."
# Verified against when the username is unknown, so that an unknown username costs the same
# hash as a wrong password: the answer's timing must not tell them apart either.
_DUMMY_HASH: Final = passwords.hash_password("not-a-real-password-0")
CURRENCY_SYMBOLS: Final = {"USD": "$", "EUR": "€", "GBP": "£", "CAD": "CA$", "AUD": "A$"}


def money(amount: Decimal | None, currency: str) -> str:
    if amount is None:
        return "—"
    sign = "−" if amount < 0 else ""
    text = format_amount(abs(amount))
    if "." in text:
        whole, frac = text.split(".")
        frac = (frac + "00")[: max(2, len(frac.rstrip("0")))]
    else:
        whole, frac = text, "00"
    whole = f"{int(whole):,}"
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{sign}{symbol}{whole}.{frac}" if symbol else f"{sign}{whole}.{frac} {currency}"


templates.env.filters["money"] = money
templates.env.globals["brand_names"] = BRAND_NAMES


class Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location


class CsrfRefused(Exception):
    pass


# The JSON API's paths (CONTRACT.md): their errors stay JSON whatever the client accepts.
API_PATHS: Final = ("/v1/", "/healthz", "/readyz", "/openapi.json", "/metrics")


def install_errors(app: FastAPI) -> None:
    async def redirect(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Redirect)
        return RedirectResponse(exc.location, status_code=303)

    async def csrf(request: Request, exc: Exception) -> Response:
        log.warning("console.csrf_refused", path=request.url.path)
        return templates.TemplateResponse(
            request,
            "error.html",
            {
                "title": "Session expired",
                "message": "This form has expired. Go back, reload the page and try again.",
            },
            status_code=403,
        )

    api_error = app.exception_handlers[StarletteHTTPException]

    async def not_found(request: Request, exc: Exception) -> Response:
        # A person who mistypes a console address gets a page, not the API's JSON; the API's
        # paths, and clients that do not ask for HTML, keep the JSON error of the contract.
        assert isinstance(exc, StarletteHTTPException)
        if (
            exc.status_code == 404
            and not request.url.path.startswith(API_PATHS)
            and "text/html" in request.headers.get("accept", "")
        ):
            return templates.TemplateResponse(
                request,
                "error.html",
                {
                    "title": "Page not found",
                    "message": "There is no page at this address. Your balance, card and "
                    "payments are on the Billing and Payments pages.",
                },
                status_code=404,
            )
        answer = api_error(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    app.add_exception_handler(Redirect, redirect)
    app.add_exception_handler(CsrfRefused, csrf)
    app.add_exception_handler(StarletteHTTPException, not_found)


# --- sessions ----------------------------------------------------------------------------------


def _store(res: Resources) -> SessionStore:
    return SessionStore(res.redis, res.settings.broker_namespace, res.web.console_session_idle_s)


def _cookie_name(res: Resources) -> str:
    return SECURE_COOKIE if res.web.console_secure_cookie else COOKIE


async def _session(request: Request) -> Session | None:
    res = resources(request)
    return await _store(res).load(request.cookies.get(_cookie_name(res)))


def _set_cookie(request: Request, response: Response, session: Session) -> Response:
    res = resources(request)
    response.set_cookie(
        _cookie_name(res),
        session.id,
        httponly=True,
        samesite="lax",
        secure=res.web.console_secure_cookie,
        path="/",
    )
    return response


async def _page(request: Request, *, changing_password: bool = False) -> Session:
    """The logged-in session, or a redirect to the login (or to the forced password change)."""
    session = await _session(request)
    if session is None or session.account_id is None:
        raise Redirect("/login")
    if session.must_change_password and not changing_password:
        raise Redirect("/billing/change-password")
    return session


async def _form(request: Request, session: Session) -> FormData:
    form = await request.form()
    presented = form.get(CSRF_FIELD)
    if not csrf_ok(session.csrf, presented if isinstance(presented, str) else None):
        raise CsrfRefused
    return form


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def _render(
    request: Request,
    session: Session | None,
    template: str,
    context: Mapping[str, Any],
    status_code: int = 200,
) -> Response:
    flash = None
    if session is not None and session.flash:
        # Shown once: the session forgets it as the page carrying it is rendered.
        flash, session.flash = session.flash, None
        await _store(resources(request)).save(session)
    response = templates.TemplateResponse(
        request,
        template,
        {"session": session, "csrf": session.csrf if session else "", "flash": flash, **context},
        status_code=status_code,
    )
    return response


async def _flash_redirect(request: Request, session: Session, location: str, text: str) -> Response:
    session.flash = text
    await _store(resources(request)).save(session)
    return RedirectResponse(location, status_code=303)


def _account(session: Session) -> str:
    assert session.account_id is not None
    return session.account_id


def _client(request: Request) -> str:
    # uvicorn runs with proxy_headers off: this is the peer, never a header a client chose.
    return request.client.host if request.client else "unknown"


# --- login, logout, password -------------------------------------------------------------------


@router.get("/")
async def home(request: Request) -> Response:
    raise Redirect("/billing")


@router.get("/login")
async def login_form(request: Request) -> Response:
    res = resources(request)
    session = await _session(request)
    if session is not None and session.logged_in:
        raise Redirect("/billing")
    if session is None:
        session = _store(res).new()
        await _store(res).save(session)
    return _set_cookie(
        request, await _render(request, session, "login.html", {"error": None}), session
    )


@router.post("/login")
async def login_submit(request: Request) -> Response:
    res = resources(request)
    store = _store(res)
    session = await _session(request)
    if session is None:
        raise CsrfRefused  # no session, so no token this form could have carried
    form = await _form(request, session)
    username = _field(form, "username").strip()
    password = _field(form, "password")
    namespace = res.settings.broker_namespace
    limit = address_limit(
        res.redis,
        namespace,
        res.web.console_address_max_failures,
        res.web.console_address_window_s,
    )
    ghost = unknown_username_limit(res.redis, namespace)
    address = _client(request)

    async def refused(message: str, status: int) -> Response:
        return await _render(
            request, session, "login.html", {"error": message, "username": username}, status
        )

    if await limit.blocked(address):
        log.warning("console.login_throttled")
        return await refused(TOO_MANY, 429)
    if await ghost.blocked(username):
        return await refused(TOO_MANY, 429)
    account_id = (
        username.removeprefix(USERNAME_PREFIX) if username.startswith(USERNAME_PREFIX) else None
    )
    try:
        if account_id is None or not 0 < len(account_id) <= 200 or len(password) > 1024:
            raise logins.UnknownAccountError("unknown username")
        async with res.connection() as conn:
            result = await logins.login(conn, account_id, password)
    except (logins.UnknownAccountError, logins.NoCredentialsError):
        await asyncio.to_thread(passwords.verify_password, password[:1024], _DUMMY_HASH)
        await limit.failed(address)
        await ghost.failed(username)
        return await refused(GENERIC_LOGIN_ERROR, 401)
    except logins.WrongPasswordError:
        await limit.failed(address)
        return await refused(GENERIC_LOGIN_ERROR, 401)
    except logins.TooManyAttemptsError:
        return await refused(TOO_MANY, 429)
    except logins.ExpiredError:
        return await refused(
            "This temporary password has expired. Contact support for a new one.", 401
        )
    except logins.AlreadyUsedError:
        return await refused(
            "This temporary password has already been used. If you did not finish changing "
            "your password, contact support for a new one.",
            401,
        )
    session.account_id = result.account_id
    session.must_change_password = result.must_change_password
    session.epoch = await store.epoch(result.account_id)
    # A new id at login: an id an attacker planted before it (session fixation) is now void.
    session = await store.rotate(session)
    log.info("console.logged_in", account_id=result.account_id)
    target = "/billing/change-password" if result.must_change_password else "/billing"
    return _set_cookie(request, RedirectResponse(target, status_code=303), session)


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = await _session(request)
    if session is not None:
        await _form(request, session)
        await _store(resources(request)).delete(session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(_cookie_name(resources(request)), path="/")
    return response


_PASSWORD_FIELD: Final[dict[str, str]] = {
    "wrong_password": "old_password",
    "too_many_attempts": "old_password",
    "expired": "old_password",
    "mismatch": "confirm_password",
    "reuse": "new_password",
    "weak": "new_password",
}


def _password_message(exc: CredentialsError) -> str:
    if exc.code == "wrong_password":
        return "The old password is not correct."
    if exc.code == "too_many_attempts":
        return TOO_MANY
    if exc.code == "expired":
        return "This temporary password has expired. Contact support for a new one."
    if exc.code == "mismatch":
        return "The two new passwords do not match."
    # The policy's own reason, as a sentence: "weak password: must be at least 12 characters"
    # and "new password must differ from ..." both read "The new password must ...".
    reason = str(exc).removeprefix("weak password: ").removeprefix("new password ")
    return f"The new password {reason}."


@router.get("/billing/change-password")
async def change_password_form(request: Request) -> Response:
    session = await _page(request, changing_password=True)
    return await _render(request, session, "change_password.html", _policy_context(session, {}))


def _policy_context(session: Session, errors: dict[str, str]) -> dict[str, Any]:
    return {
        "errors": errors,
        "min_length": passwords.MIN_LENGTH,
        "forced": session.must_change_password,
        "username": USERNAME_PREFIX + _account(session),
    }


@router.post("/billing/change-password")
async def change_password_submit(request: Request) -> Response:
    res = resources(request)
    store = _store(res)
    session = await _page(request, changing_password=True)
    form = await _form(request, session)
    account_id = _account(session)
    try:
        async with res.connection() as conn:
            await logins.change_password(
                conn,
                account_id,
                _field(form, "old_password")[:1024],
                _field(form, "new_password")[:1024],
                _field(form, "confirm_password")[:1024],
            )
    except CredentialsError as exc:
        errors = {_PASSWORD_FIELD.get(exc.code, "old_password"): _password_message(exc)}
        return await _render(
            request, session, "change_password.html", _policy_context(session, errors), 422
        )
    # Every other session of the account ends; this one lives on under a new id.
    session.epoch = await store.end_other_sessions(account_id)
    session.must_change_password = False
    session.flash = "Your password has been changed."
    session = await store.rotate(session)
    return _set_cookie(request, RedirectResponse("/billing", status_code=303), session)


# --- billing: balance, status, card, authentication ---------------------------------------------


# Why an account is suspended (accounts.suspended_reason, migration 0005), in the customer's
# words, and what brings it back.
SUSPENSION: Final = {
    "ladder": (
        "Your card was declined on every automatic recharge and your balance ran out.",
        "Add a card that works below: we charge it at once and your account comes back.",
    ),
    "no_auto_recharge": (
        "Your balance is at or below zero and auto-recharge is off.",
        "Make a recharge or turn auto-recharge on, on the Payments page.",
    ),
}


def _suspension(view: Mapping[str, Any]) -> dict[str, str] | None:
    if view["status"] != "suspended":
        return None
    why, fix = SUSPENSION.get(view.get("suspended_reason") or "", SUSPENSION["ladder"])
    return {"reason": why, "help": fix}


async def _view(res: Resources, account_id: str) -> dict[str, Any]:
    async with res.connection() as conn:
        return await console_view(conn, account_id)


@router.get("/billing")
async def billing(request: Request) -> Response:
    res = resources(request)
    session = await _page(request)
    view = await _view(res, _account(session))
    return await _render(request, session, "billing.html", _billing_context(res, view, {}))


def _billing_context(
    res: Resources, view: dict[str, Any], errors: dict[str, str]
) -> dict[str, Any]:
    return {
        "view": view,
        "suspension": _suspension(view),
        "errors": errors,
        "gateway": res.settings.payment_gateway,
        "stripe_key": res.web.stripe_publishable_key,
        "stripe_js_url": res.web.stripe_js_url,
        "active": "billing",
    }


@router.post("/billing/card")
async def add_card(request: Request) -> Response:
    res = resources(request)
    session = await _page(request)
    form = await _form(request, session)
    account_id = _account(session)
    if res.settings.payment_gateway != "simulated":
        raise Redirect("/billing")  # card numbers never reach this server with Stripe
    try:
        card = parse_card(
            _field(form, "card_number"),
            _field(form, "expiry"),
            _field(form, "cvc"),
            datetime.now(UTC).date(),
        )
        async with res.connection() as conn:
            result = await attach_card(
                conn, res.gateway(), account_id, card.payment_method, res.settings, card.display
            )
    except CardInputError as exc:
        view = await _view(res, account_id)
        ctx = _billing_context(res, view, {exc.field: str(exc)})
        return await _render(request, session, "billing.html", ctx, 422)
    except CardRejected as exc:
        view = await _view(res, account_id)
        ctx = _billing_context(res, view, {"card_number": exc.message})
        return await _render(request, session, "billing.html", ctx, 422)
    log.info("console.card_added", account_id=account_id, attempt_run_id=result.attempt_run_id)
    text = (
        f"Your {BRAND_NAMES.get(card.display.brand, card.display.brand)} ending in "
        f"{card.display.last4} is now your card on file."
    )
    if result.attempt_run_id is not None:
        text += " We are charging it now to bring your account back."
    return await _flash_redirect(request, session, "/billing", text)


@router.post("/billing/card/setup")
async def card_setup(request: Request) -> Response:
    """PAYMENT_GATEWAY=stripe: a SetupIntent's client secret for Stripe.js (posted by the
    page's script, the CSRF token in a header)."""
    res = resources(request)
    call = await _stripe_script_call(request, "card setup")
    if isinstance(call, Response):
        return call
    session, gateway = call
    try:
        async with res.connection() as conn:
            secret = await start_card_setup(conn, gateway, _account(session))
    except GatewayError:
        log.warning("console.card_setup_failed", account_id=_account(session))
        return _processor_down_json()
    return JSONResponse({"client_secret": secret})


async def _stripe_script_call(
    request: Request, step: str
) -> tuple[Session, StripeGateway] | Response:
    """A JSON call from the page's Stripe.js script: the signed-in session (the CSRF token in
    a header) and the Stripe gateway; a 409 answer when the gateway is not Stripe."""
    session = await _page(request)
    if not csrf_ok(session.csrf, request.headers.get(CSRF_HEADER)):
        raise CsrfRefused
    gateway = resources(request).gateway()
    if not isinstance(gateway, StripeGateway):
        return JSONResponse({"error": f"{step} needs PAYMENT_GATEWAY=stripe"}, status_code=409)
    return session, gateway


def _processor_down_json() -> Response:
    return JSONResponse(
        {"error": "Our payment processor did not answer. Please try again."}, status_code=502
    )


@router.post("/billing/card/confirmed")
async def card_confirmed(request: Request) -> Response:
    """PAYMENT_GATEWAY=stripe: Stripe.js confirmed the SetupIntent; its card goes on file."""
    res = resources(request)
    session = await _page(request)
    form = await _form(request, session)
    account_id = _account(session)
    gateway = res.gateway()
    setup_intent = _field(form, "setup_intent")
    if not isinstance(gateway, StripeGateway) or not setup_intent.startswith("seti_"):
        raise Redirect("/billing")
    try:
        async with res.connection() as conn:
            result = await finish_card_setup(conn, gateway, account_id, setup_intent, res.settings)
    except (CardRejected, AccountError) as exc:
        message = exc.message if isinstance(exc, CardRejected) else str(exc)
        view = await _view(res, account_id)
        ctx = _billing_context(res, view, {"card_number": message})
        return await _render(request, session, "billing.html", ctx, 422)
    log.info("console.card_added", account_id=account_id, attempt_run_id=result.attempt_run_id)
    async with res.connection() as conn:
        view = await console_view(conn, account_id)
    card = view["card"]
    text = (
        f"Your {BRAND_NAMES.get(card['brand'], card['brand'].capitalize())} ending in "
        f"{card['last4']} is now your card on file."
        if card
        else "Your new card is on file."
    )
    if result.attempt_run_id is not None:
        text += " We are charging it now to bring your account back."
    return await _flash_redirect(request, session, "/billing", text)


@router.get("/billing/authenticate")
async def authenticate_form(request: Request) -> Response:
    res = resources(request)
    session = await _page(request)
    view = await _view(res, _account(session))
    if view["awaiting_authentication"] is None:
        raise Redirect("/billing")
    ctx = {**_billing_context(res, view, {}), "view": view}
    return await _render(request, session, "authenticate.html", ctx)


@router.post("/billing/authenticate")
async def authenticate_submit(request: Request) -> Response:
    res = resources(request)
    session = await _page(request)
    form = await _form(request, session)
    account_id = _account(session)
    view = await _view(res, account_id)
    awaiting = view["awaiting_authentication"]
    if awaiting is None:
        raise Redirect("/billing")
    if _field(form, "decision") != "complete":
        return await _flash_redirect(
            request, session, "/billing", "The payment was not confirmed; nothing was charged."
        )
    gateway = res.gateway()
    if not isinstance(gateway, SimulatedGateway):
        raise Redirect("/billing")
    await gateway.confirm_authentication(account_id)
    try:
        async with res.connection() as conn:
            # The same charging path as any recharge: the charge worker charges, credits, and
            # a success resets the retry ladder.
            run_id = await request_manual_recharge(
                conn, account_id, awaiting["amount"], res.settings
            )
    except (AccountError, LimitError) as exc:
        return await _flash_redirect(request, session, "/billing", str(exc))
    log.info("console.authenticated", account_id=account_id, run_id=run_id)
    return await _flash_redirect(
        request,
        session,
        f"/payments?run={run_id}",
        "Payment confirmed with your bank. Your balance updates as soon as the charge completes.",
    )


# PAYMENT_GATEWAY=stripe: the failed charge's PaymentIntent is confirmed on-session by Stripe.js
# (common/recharge/authentication.py); the server always asks Stripe what happened.
NOT_CONFIRMED_TEXT: Final = (
    "Your bank did not confirm the payment; nothing was charged. You can try again below."
)
PENDING_TEXT: Final = (
    "Your bank has not confirmed the payment yet. Your balance updates as soon as it does."
)
PROCESSOR_DOWN_TEXT: Final = (
    "Our payment processor did not answer. If you confirmed the payment with your bank, your "
    "balance updates within a few minutes; otherwise please try again."
)
REFUSED_TEXT: Final = {
    Refusal.NOTHING_AWAITING: "No payment is waiting for your confirmation.",
    Refusal.NOT_CONFIRMABLE: (
        "This payment can no longer be completed. Make a recharge on the Payments page instead."
    ),
    Refusal.MISMATCH: "This payment cannot be completed here. Please contact support.",
}


@router.post("/billing/authenticate/start")
async def authenticate_start(request: Request) -> Response:
    """The client secret of the failed charge's PaymentIntent for Stripe.js's
    confirmCardPayment (posted by the page's script, the CSRF token in a header). The
    confirmation is recorded before the secret is answered (the sweep's way forward)."""
    res = resources(request)
    call = await _stripe_script_call(request, "this step")
    if isinstance(call, Response):
        return call
    session, gateway = call
    account_id = _account(session)
    try:
        async with res.connection() as conn:
            begun = await begin_authentication(conn, gateway, account_id)
    except GatewayError:
        log.warning("console.authentication_start_failed", account_id=account_id)
        return _processor_down_json()
    if isinstance(begun, Refused):
        return JSONResponse({"error": REFUSED_TEXT[begun.reason]}, status_code=409)
    if isinstance(begun, ReadyToSettle):
        return JSONResponse({"settle": True})
    return JSONResponse(
        {"client_secret": begun.client_secret, "payment_method": begun.payment_method}
    )


@router.post("/billing/authenticate/confirmed")
async def authenticate_confirmed(request: Request) -> Response:
    """Stripe.js says it is done: settle with what Stripe says (credited once, whoever asks)."""
    res = resources(request)
    session = await _page(request)
    await _form(request, session)
    gateway = res.gateway()
    if not isinstance(gateway, StripeGateway):
        raise Redirect("/billing")
    account_id = _account(session)
    try:
        async with res.connection() as conn:
            settled = await settle_authentication(conn, gateway, account_id)
    except GatewayError:
        log.warning("console.authentication_settle_failed", account_id=account_id)
        return await _flash_redirect(request, session, "/billing", PROCESSOR_DOWN_TEXT)
    if isinstance(settled, Credited | AlreadySettled):
        log.info("console.authenticated", account_id=account_id, run_id=settled.run_id)
        # The payments page's script reads the run: "Recharged $25.00. Your balance is now ...",
        # as after any recharge.
        target = "/payments" if settled.run_id is None else f"/payments?run={settled.run_id}"
        return await _flash_redirect(request, session, target, "Payment confirmed with your bank.")
    if isinstance(settled, NotConfirmed):
        return await _flash_redirect(request, session, "/billing", NOT_CONFIRMED_TEXT)
    if isinstance(settled, StillPending):
        return await _flash_redirect(request, session, "/billing", PENDING_TEXT)
    if isinstance(settled, Refused):
        return await _flash_redirect(request, session, "/billing", REFUSED_TEXT[settled.reason])
    raise Redirect("/billing")  # NothingStarted: no confirmation of this account's to settle


# --- payments: auto-recharge, manual recharge, alert --------------------------------------------


def _payments_context(
    res: Resources, view: dict[str, Any], errors: dict[str, str], values: Mapping[str, str]
) -> dict[str, Any]:
    maximum = effective_max(res.settings.max_recharge_amount, view["max_recharge_amount"])
    if not values:
        auto = view["auto_recharge"]
        values = {
            "enabled": "on" if auto["enabled"] else "",
            "balance_amount": _plain(auto["balance_amount"]),
            "recharge_amount": _plain(auto["recharge_amount"]),
            "mode": auto["mode"] or "repeat",
        }
    return {
        "view": view,
        "errors": errors,
        "values": values,
        "minimum": res.settings.min_recharge_amount,
        "maximum": maximum,
        "active": "payments",
    }


@router.get("/payments")
async def payments(request: Request) -> Response:
    res = resources(request)
    session = await _page(request)
    view = await _view(res, _account(session))
    ctx = _payments_context(res, view, {}, {})
    run = request.query_params.get("run")
    ctx["run_id"] = int(run) if run and run.isdigit() and len(run) < 19 else None
    return await _render(request, session, "payments.html", ctx)


def _plain(amount: Decimal | None) -> str:
    return "" if amount is None else format_amount(amount)


templates.env.filters["plain"] = _plain


def _amount(text: str, field: str) -> Decimal:
    try:
        return parse_amount(text.strip().replace(",", "").removeprefix("$"), field=field)
    except (ValueError, InvalidOperation, ArithmeticError):
        raise AccountError(f"{field}: enter an amount such as 25 or 25.50") from None


def short_amount(amount: Decimal) -> str:
    """25 rather than 25.00, 10,000 rather than 10000.00: how the FAQ writes its limits."""
    whole = amount == amount.to_integral_value()
    return f"{int(amount):,}" if whole else f"{amount:,.2f}"


templates.env.filters["short"] = short_amount


def _limit_message(exc: Exception, res: Resources | None = None, account_max: Any = None) -> str:
    """The limits' refusal (common/recharge/limits.py) in the FAQ's words."""
    text = str(exc)
    if res is not None and "below the minimum" in text:
        return f"The minimum recharge is {short_amount(res.settings.min_recharge_amount)}."
    if res is not None and "above the maximum" in text:
        maximum = effective_max(res.settings.max_recharge_amount, account_max)
        return (
            f"The maximum recharge is {short_amount(maximum)}. To recharge more than the "
            "maximum, contact support."
        )
    return text[:1].upper() + text[1:]


@router.post("/payments/auto-recharge")
async def save_auto_recharge(request: Request) -> Response:
    res = resources(request)
    session = await _page(request)
    form = await _form(request, session)
    account_id = _account(session)
    enabled = _field(form, "enabled") == "on"
    mode: RechargeMode = "single" if _field(form, "mode") == "single" else "repeat"
    values = {k: _field(form, k) for k in ("enabled", "balance_amount", "recharge_amount", "mode")}
    errors: dict[str, str] = {}
    try:
        threshold = _amount(values["balance_amount"], "Balance Amount") if enabled else None
    except AccountError:
        errors["balance_amount"] = "Enter an amount such as 100 or 100.50."
        threshold = None
    try:
        recharge = _amount(values["recharge_amount"], "Recharge Amount") if enabled else None
    except AccountError:
        errors["recharge_amount"] = "Enter an amount such as 25 or 25.50."
        recharge = None
    if not errors:
        try:
            async with res.connection() as conn:
                await set_auto_recharge(
                    conn,
                    account_id,
                    res.settings,
                    balance_amount=threshold,
                    recharge_amount=recharge,
                    mode=mode,
                )
        except LimitError as exc:
            view = await _view(res, account_id)
            errors["recharge_amount"] = _limit_message(exc, res, view["max_recharge_amount"])
        except (AccountError, ValueError) as exc:
            field = "balance_amount" if "balance" in str(exc) else "recharge_amount"
            errors[field] = _limit_message(exc)
    if errors:
        view = await _view(res, account_id)
        ctx = _payments_context(res, view, errors, values)
        ctx["run_id"] = None
        return await _render(request, session, "payments.html", ctx, 422)
    log.info("console.auto_recharge_saved", account_id=account_id, enabled=enabled)
    text = "Auto-recharge is on." if enabled else "Auto-recharge is off."
    return await _flash_redirect(request, session, "/payments", text)


@router.post("/payments/alert")
async def save_alert(request: Request) -> Response:
    res = resources(request)
    session = await _page(request)
    form = await _form(request, session)
    account_id = _account(session)
    text = _field(form, "alert_level").strip()
    try:
        level = _amount(text, "alert level") if text else None
        async with res.connection() as conn:
            await set_low_balance_alert(conn, account_id, level)
    except (AccountError, ValueError) as exc:
        view = await _view(res, account_id)
        ctx = _payments_context(res, view, {"alert_level": _limit_message(exc)}, {})
        ctx["run_id"] = None
        return await _render(request, session, "payments.html", ctx, 422)
    message = "Low-balance alert removed." if level is None else "Low-balance alert saved."
    return await _flash_redirect(request, session, "/payments", message)


@router.post("/payments/recharge")
async def manual_recharge(request: Request) -> Response:
    """A one-off recharge. The page's script posts it with the token in a header and polls
    /payments/recharges/<id>; without the script it is a plain form and a redirect."""
    res = resources(request)
    session = await _page(request)
    scripted = request.headers.get(CSRF_HEADER) is not None
    if scripted:
        if not csrf_ok(session.csrf, request.headers.get(CSRF_HEADER)):
            raise CsrfRefused
        form = await request.form()
    else:
        form = await _form(request, session)
    account_id = _account(session)
    try:
        amount = _amount(_field(form, "amount"), "amount")
        async with res.connection() as conn:
            run_id = await request_manual_recharge(conn, account_id, amount, res.settings)
    except (AccountError, LimitError, ValueError) as exc:
        view = await _view(res, account_id)
        message = _limit_message(exc, res, view["max_recharge_amount"])
        if "no card on file" in message:
            message = "Add a card on the Billing page first."
        if scripted:
            return JSONResponse({"error": message}, status_code=422)
        return await _flash_redirect(request, session, "/payments", message)
    log.info("console.recharge_requested", account_id=account_id, run_id=run_id)
    if scripted:
        return JSONResponse({"run_id": run_id}, status_code=202)
    raise Redirect(f"/payments?run={run_id}")


@router.get("/payments/recharges/{run_id}")
async def recharge_status(
    request: Request, run_id: Annotated[int, FastApiPath(ge=1, le=MAX_CURSOR)]
) -> Response:
    res = resources(request)
    session = await _page(request)
    account_id = _account(session)
    async with res.connection() as conn:
        try:
            summary = await run_summary(conn, run_id)
        except AccountError:
            summary = None
    # Someone else's run is as unknown as a run that does not exist.
    if summary is None or summary["account_id"] != account_id:
        return JSONResponse({"error": "unknown recharge"}, status_code=404)
    async with res.connection() as conn:
        view = await show_account_state(conn, account_id)
    charge = summary["charges"][-1] if summary["charges"] else None
    done = summary["state"] in FINAL_RUN_STATES or summary["state"] == "failing"
    return JSONResponse(
        {
            "state": summary["state"],
            "done": done,
            "succeeded": summary["state"] == "succeeded",
            "amount": money(charge["amount"], view["currency"]) if charge else None,
            "decline": _decline_text(charge["failure_code"]) if charge else None,
            "balance": money(view["balance"], view["currency"]),
            "status": view["status"],
        }
    )


DECLINE_TEXT: Final = {
    "card_declined": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "authentication_required": "Your bank asks you to confirm this payment (see Billing).",
    "no_payment_method": "There is no card on file.",
}


def _decline_text(code: str | None) -> str | None:
    if code is None:
        return None
    return DECLINE_TEXT.get(code, code.replace("_", " ").capitalize() + ".")


templates.env.filters["decline"] = _decline_text


# --- history -----------------------------------------------------------------------------------


def _cursor(text: str | None) -> int:
    return int(text) if text and text.isdigit() and len(text) < 19 else MAX_CURSOR


@router.get("/history")
async def history(request: Request) -> Response:
    res = resources(request)
    session = await _page(request)
    account_id = _account(session)
    before = _cursor(request.query_params.get("before"))
    charges_before = _cursor(request.query_params.get("charges_before"))
    async with res.connection() as conn:
        view = await console_view(conn, account_id)
        ledger = await ledger_page_newest(conn, account_id, before=before, limit=HISTORY_PAGE)
        charges = await charges_page_newest(
            conn, account_id, before=charges_before, limit=HISTORY_PAGE
        )
    return await _render(
        request,
        session,
        "history.html",
        {
            "view": view,
            "ledger": ledger,
            "charges": charges,
            "first_page": before == MAX_CURSOR,
            "latest_id": ledger.items[0]["id"] if ledger.items else 0,
            "active": "history",
        },
    )


KIND_TEXT: Final = {
    "usage": "Usage",
    "recharge": "Card recharge",
    "credit": "Credit from support",
}
templates.env.filters["entry_kind"] = lambda kind: KIND_TEXT.get(kind, kind.capitalize())


@router.get("/history/entries")
async def history_entries(request: Request) -> Response:
    """Ledger entries after a cursor, for the history page's live update (oldest first)."""
    res = resources(request)
    session = await _page(request)
    account_id = _account(session)
    after = _cursor(request.query_params.get("after"))
    after = 0 if after == MAX_CURSOR else after
    async with res.connection() as conn:
        view = await show_account_state(conn, account_id)
        page = await ledger_page(conn, account_id, after=after, limit=HISTORY_PAGE)
    currency = view["currency"]
    return JSONResponse(
        {
            "balance": money(view["balance"], currency),
            "entries": [
                {
                    "id": e["id"],
                    "date": e["created_at"].strftime("%Y-%m-%d %H:%M"),
                    "kind": KIND_TEXT.get(e["kind"], e["kind"]),
                    "amount": money(e["amount"], currency),
                    "credit": e["amount"] > 0,
                    "balance_after": money(e["balance_after"], currency),
                }
                for e in page.items
            ],
        }
    )


def csv_text(value: str | None) -> str:
    """A text cell a spreadsheet will not run: references come from upstream (event ids), and
    a leading =, +, - or @ would make a formula of them (CSV injection)."""
    text = value or ""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@router.get("/history.csv")
async def history_csv(request: Request) -> Response:
    res = resources(request)
    session = await _page(request)
    account_id = _account(session)

    async def rows() -> AsyncIterator[str]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["id", "date", "kind", "amount", "balance_after", "reference"])
        after = 0
        while True:
            async with res.connection() as conn:
                page = await ledger_page(conn, account_id, after=after, limit=500)
            for e in page.items:
                writer.writerow(
                    [
                        e["id"],
                        e["created_at"].isoformat(),
                        e["kind"],
                        format_amount(e["amount"]),
                        format_amount(e["balance_after"]),
                        csv_text(e["reference"]),
                    ]
                )
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            if page.next is None:
                return
            after = page.next

    filename = f"contacto-billing-{account_id}-history.csv"
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
