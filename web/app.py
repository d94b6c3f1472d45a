"""The ASGI app factory of the `web` process: `uvicorn --factory web.app:create_app`.

One FastAPI app: the account API under /v1 (bearer tokens), /healthz and /readyz, the OpenAPI
document at /openapi.json. The customer console's pages (web/console/) are served by the same app.
Building the app connects to nothing: the lifespan (web/resources.py) opens the engine, Redis
and the broker on the worker's event loop and disposes them when it stops.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from common.credentials.tokens import SCOPES
from common.logging import configure_logging
from config.settings import Settings, WebSettings, get_settings, get_web_settings
from web import console, errors
from web.api import routers
from web.api.models import ERROR_DESCRIPTIONS, USAGE_BATCH_SCHEMA, USAGE_EVENT_SCHEMA
from web.middleware import REQUEST_ID_HEADER, RequestContext
from web.resources import lifespan

API_VERSION: Final = "1.0.0"
DESCRIPTION: Final = f"""
The account API of Contacto Billing: whether an account may spend (its balance and status),
its ledger and card charges, and usage events for platforms that do not speak dramatiq.

* Authentication: `Authorization: Bearer <token>`; tokens come from
  `contacto-billing api-tokens create NAME` (scopes: {", ".join(SCOPES)}).
* Amounts are decimal strings, never JSON numbers, in requests and responses alike.
* Errors: `{{"error": {{"code": "...", "message": "..."}}}}`.
* Every response carries `{REQUEST_ID_HEADER}`; send your own (1-128 of `A-Za-z0-9._:-`) to
  find a request in our logs, or one is made.
"""

# Sent by any operation: the error document, and the request id header.
_ERROR_CONTENT: Final = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_REQUEST_ID: Final = {
    "description": "the request's id: yours if you sent a sane one, else a new one",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["UsageEvent"] = USAGE_EVENT_SCHEMA
    components["UsageBatch"] = USAGE_BATCH_SCHEMA
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            secured = bool(operation.get("security"))
            responses = operation.setdefault("responses", {})
            # Any request may be refused for its size, and a secured one for its token.
            wanted = ["413", *(["401", "403", "503"] if secured else [])]
            for status in wanted:
                responses.setdefault(
                    status, {"description": ERROR_DESCRIPTIONS[status], "content": _ERROR_CONTENT}
                )
            for response in responses.values():
                response.setdefault("headers", {})[REQUEST_ID_HEADER] = _REQUEST_ID
                if "content" not in response:
                    response["content"] = _ERROR_CONTENT
            if "401" in responses:
                responses["401"]["headers"]["WWW-Authenticate"] = {
                    "description": "Bearer challenge (RFC 6750)",
                    "required": True,
                    "schema": {"type": "string"},
                }
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings | None = None, web: WebSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    web = web or get_web_settings()
    # Each uvicorn worker process builds its app here: its logging is set up here too.
    configure_logging(settings.log_format)
    app = FastAPI(
        title="Contacto Billing API",
        version=API_VERSION,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        # No HTML documentation pages: they load scripts from a CDN; /openapi.json is the doc.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan(settings, web),
        # Our metrics and logs are our own (structlog, Prometheus); FastAPI's OpenTelemetry
        # hooks would otherwise ask on every request whether a provider was configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    for router in routers():
        app.include_router(router)
    errors.install(app)
    console.install(app, settings, web)
    app.add_middleware(
        RequestContext,
        max_body_bytes=web.max_body_bytes,
        access_log=web.access_log,
        slow_request_ms=web.slow_request_ms,
    )

    def openapi() -> dict[str, Any]:
        return _openapi(app)

    app.openapi = openapi  # type: ignore[method-assign]
    return app
