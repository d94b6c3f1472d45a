"""/healthz and /readyz, and what the API answers while PostgreSQL or Redis is away: 503 with
Retry-After, never a 500 (and nothing enqueued when Redis is the one missing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from config.settings import Settings, WebSettings
from tests.integration.web.conftest import bearer
from tests.support.factories import event, new_id
from tests.support.localstripe import free_port
from web.app import create_app


async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, WebSettings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            yield client


@pytest.fixture
async def nothing_answers(test_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    dead = free_port()
    settings = test_settings.model_copy(
        update={
            "database_url": f"postgresql://postgres@127.0.0.1:{dead}/contacto",
            "redis_url": f"redis://127.0.0.1:{dead}/0",
        }
    )
    async for client in client_for(settings):
        yield client


@pytest.fixture
async def redis_away(test_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    settings = test_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async for client in client_for(settings):
        yield client


async def test_ready_when_both_answer(api: httpx.AsyncClient) -> None:
    response = await api.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}


async def test_not_ready_and_unavailable_when_nothing_answers(
    nothing_answers: httpx.AsyncClient,
) -> None:
    assert (await nothing_answers.get("/healthz")).json() == {"status": "ok"}
    ready = await nothing_answers.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "checks": {"postgres": "unavailable", "redis": "unavailable"},
    }
    token = f"cbt_{'0' * 16}_{'A' * 43}"
    response = await nothing_answers.get("/v1/accounts/x", headers=bearer(token))
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert response.headers["Retry-After"]


async def test_usage_is_503_and_not_accepted_while_redis_is_away(
    redis_away: httpx.AsyncClient, token: str, conn: Any
) -> None:
    ready = await redis_away.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "unavailable"}
    response = await redis_away.post("/v1/usage", json=event(new_id()), headers=bearer(token))
    assert response.status_code == 503, response.text
    assert "Redis" in response.json()["error"]["message"]
