"""The billing console: the pages a customer uses with the credentials support issued.

Server-rendered (Jinja2, templates/), a little JavaScript (static/console.js) for the live
parts. Every operation calls the service the CLI and the API call (common/credentials,
common/recharge, common/accounts): no rule lives here twice. Sessions are server-side in Redis
(sessions.py); CSRF tokens, the per-address login limit and the page headers are security.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from config.settings import Settings, WebSettings
from web.console.routes import install_errors, router
from web.console.security import ConsoleHeaders

STATIC_DIR: Final = Path(__file__).parent / "static"


def install(app: FastAPI, settings: Settings, web: WebSettings) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_errors(app)
    stripe = settings.payment_gateway == "stripe"
    app.add_middleware(ConsoleHeaders, stripe_js_url=web.stripe_js_url if stripe else None)
