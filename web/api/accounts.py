"""GET /v1/accounts/{account_id}, …/ledger, …/charges: what `accounts show` reads, for the
upstream platform (may this account spend?) and for ops tools and the console."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from common.accounts.support import (
    MAX_CURSOR,
    MAX_PAGE_SIZE,
    UnknownAccountError,
    charges_page,
    ledger_page,
    show_account_state,
)
from common.credentials.tokens import SCOPE_ACCOUNTS_READ
from common.jsonable import to_jsonable
from web.api.models import Account, ChargesPage, LedgerPage, error_responses
from web.auth import BearerToken
from web.errors import ApiError
from web.resources import resources
from web.responses import JSONBytes

# Every route here needs a token with accounts:read.
router = APIRouter(
    prefix="/v1/accounts",
    tags=["accounts"],
    dependencies=[Depends(BearerToken(SCOPE_ACCOUNTS_READ))],
)
AccountId = Annotated[str, Path(description="the account's id (1 to 200 characters)")]
After = Annotated[
    int,
    Query(ge=0, le=MAX_CURSOR, description="cursor: the `next` of the previous page (0: start)"),
]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="at most this many rows")]
DEFAULT_LIMIT: Final = 100


def _not_found(exc: UnknownAccountError) -> ApiError:
    return ApiError(404, "account_not_found", str(exc))


@router.get(
    "/{account_id}",
    summary="An account's balance, status and auto-recharge state",
    response_class=JSONBytes,
    responses={200: {"model": Account}, **error_responses(404, 422)},
)
async def get_account(account_id: AccountId, request: Request) -> Response:
    async with resources(request).connection() as conn:
        try:
            state = await show_account_state(conn, account_id)
        except UnknownAccountError as exc:
            raise _not_found(exc) from None
    return JSONBytes(to_jsonable(state))


@router.get(
    "/{account_id}/ledger",
    summary="An account's ledger entries, oldest first, a page at a time",
    response_class=JSONBytes,
    responses={200: {"model": LedgerPage}, **error_responses(404, 422)},
)
async def get_ledger(
    account_id: AccountId,
    request: Request,
    after: After = 0,
    limit: Limit = DEFAULT_LIMIT,
) -> Response:
    async with resources(request).connection() as conn:
        try:
            page = await ledger_page(conn, account_id, after=after, limit=limit)
        except UnknownAccountError as exc:
            raise _not_found(exc) from None
    return JSONBytes(
        {"account_id": page.account_id, "entries": to_jsonable(page.items), "next": page.next}
    )


@router.get(
    "/{account_id}/charges",
    summary="An account's card charges (automatic and manual), oldest first, a page at a time",
    response_class=JSONBytes,
    responses={200: {"model": ChargesPage}, **error_responses(404, 422)},
)
async def get_charges(
    account_id: AccountId,
    request: Request,
    after: After = 0,
    limit: Limit = DEFAULT_LIMIT,
) -> Response:
    async with resources(request).connection() as conn:
        try:
            page = await charges_page(conn, account_id, after=after, limit=limit)
        except UnknownAccountError as exc:
            raise _not_found(exc) from None
    return JSONBytes(
        {"account_id": page.account_id, "charges": to_jsonable(page.items), "next": page.next}
    )
