# One image for every process of the stack: the Procfile's web process (the account API) and
# four workers (balance, charge, retry, relay), the migration (`contacto-billing db upgrade`) and the CLI; docker-compose.yml gives
# each service its command. Build: `docker compose build`, or `docker build -t contacto-billing .`
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies (pyproject.toml's, without the dev and demo extras) in a layer of their own:
# a change to the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code, installed in place: /app is what runs (`python -m dramatiq workers.balance` from
# WORKDIR, the `contacto-billing` command, the migrations).
COPY README.md Procfile ./
COPY bin ./bin
COPY common ./common
COPY config ./config
COPY workers ./workers
COPY web ./web
# Nothing needs root at run time (dramatiq_prom_db, /tmp/prom in docker-compose.yml, is under
# /tmp); a numeric user, so that a runtime can tell it is not root.
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /app contacto
USER 10001:10001

# The account API 8000; Prometheus: balance 9191, charge 9192, retry 9193, relay 9194 (see the
# Procfile).
EXPOSE 8000 9191 9192 9193 9194
CMD ["contacto-billing", "--help"]
