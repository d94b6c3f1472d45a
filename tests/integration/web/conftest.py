"""The account API in process: the app of `create_app`, its lifespan run on the session's loop,
called through httpx's ASGI transport (no socket, no server)."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from common.credentials.tokens import SCOPES, create_token
from common.logging import configure_logging
from config.settings import Settings, WebSettings
from tests.support.factories import new_id
from tests.support.waiting import until_true
from web.app import create_app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def web_settings() -> WebSettings:
    return WebSettings(CONTACTO_WEB_MAX_BODY_BYTES=256 * 1024)


@pytest.fixture
async def app(test_settings: Settings, web_settings: WebSettings) -> AsyncIterator[FastAPI]:
    """The app with its resources open (on this test's broker namespace)."""
    application = create_app(test_settings, web_settings)
    async with application.router.lifespan_context(application):
        # Every test runs with the token cache on, as the web process does.
        tokens = application.state.resources.tokens
        await until_true(lambda: tokens.listening, what="the token cache's listener")
        yield application


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


async def new_token(conn: Any, scopes: tuple[str, ...] = SCOPES) -> str:
    return (await create_token(conn, new_id("token"), scopes)).token


@pytest.fixture
async def token(conn: Any) -> str:
    """A live token with every scope."""
    return await new_token(conn)


@pytest.fixture
def log_lines(app: FastAPI) -> Iterator[io.StringIO]:
    """Everything logged from here on (after the app set up its own logging), as JSON lines."""
    stream = io.StringIO()
    configure_logging("json")
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    configure_logging("json")
