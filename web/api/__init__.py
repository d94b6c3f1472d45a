"""The JSON API's routers: accounts (read), usage (write), health (no token)."""

from __future__ import annotations

from fastapi import APIRouter

from web.api import accounts, health, usage


def routers() -> tuple[APIRouter, ...]:
    return (accounts.router, usage.router, health.router)
