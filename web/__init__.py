"""The `web` process: one ASGI app (FastAPI on uvicorn) for the account API, and later the
customer console, on the same services and domain code as the CLI and the workers.

    web/app.py          the app factory (`create_app`) and its lifespan
    web/api/            the JSON API's routers (/v1/…, /healthz, /readyz)
    web/__main__.py     `python -m web`: the Procfile's `web` line

Rules live in common/: the API decodes usage with the balance worker's decoder, reads accounts
with `accounts show`'s query, and checks tokens with common/credentials/tokens.py.
"""
