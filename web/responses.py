"""JSON responses rendered by orjson, from values already made JSON-ready (`to_jsonable`)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JSONBytes(JSONResponse):
    """application/json rendered by orjson (several times faster than the standard library on
    the account API's hot path). Amounts must already be decimal strings: `to_jsonable`.
    A JSONResponse, so that FastAPI documents the routes' models as JSON documents."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
