# Contacto Billing. On a fresh machine: `make demo`, then `make test`. `make` alone: the targets.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Re-install when pyproject.toml changes (new dependency, new extra).
STAMP  := $(VENV)/.installed
DEMO_ARGS ?=
RUN_ARGS  ?=

.DEFAULT_GOAL := help
.PHONY: help venv run demo test test-rabbitmq lint mutation clean-demo

# `target: prerequisites ## one line` is what `make help` lists.
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## create .venv and install the project with its dev and demo extras

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,demo]'
	touch $@

# The Procfile's processes (bin/python runs them with this venv's Python, activated or not),
# with ./.env when there is one (honcho reads it, the migration too); DATABASE_URL and REDIS_URL
# must answer. Some of them only: make run RUN_ARGS='balance relay'
run: export CONTACTO_PYTHON = $(abspath $(BIN)/python)
run: $(STAMP) ## migrate (db upgrade), then start every Procfile process with honcho
	$(BIN)/honcho run $(BIN)/contacto-billing db upgrade
	$(BIN)/honcho start $(RUN_ARGS)

# Uses DATABASE_URL / REDIS_URL when they answer, else embedded servers under ./.contacto.
# Extra options: make demo DEMO_ARGS='--keep-running --interval-s 1'
demo: $(STAMP) ## the whole pipeline end to end: services, workers, the FAQ's scenarios
	$(BIN)/contacto-billing demo $(DEMO_ARGS)

test: $(STAMP) ## the tests: pytest -q (real PostgreSQL and Redis on 127.0.0.1)
	$(BIN)/python -m pytest -q

test-rabbitmq: $(STAMP) ## the e2e tier on RabbitMQ (a vhost per test; CI runs it after `make test`)
	CONTACTO_TEST_BROKER=rabbitmq $(BIN)/python -m pytest -q tests/e2e

lint: $(STAMP) ## ruff check, ruff format --check, mypy (what CI and pre-commit run)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy common config workers tests bench web

# Mutation testing of pure modules against their own unit tests (docs/testing.md): mutmut, then
# tools/mutate_constants.py; fails below 95 % killed. Slow (4-5 minutes on 2 cores), so not in
# `make test` or CI. One line per module, MODULE=TEST[,TEST...]; one module alone:
#   make mutation MUTATION_MODULES=common/usage/decode.py=tests/unit/test_usage_decode.py
MUTATION_MODULES ?= \
	common/recharge/policy.py=tests/unit/test_policy.py \
	common/usage/decode.py=tests/unit/test_usage_decode.py \
	common/money.py=tests/unit/test_money.py \
	common/gateway/currencies.py=tests/unit/test_currencies.py \
	common/recharge/limits.py=tests/unit/test_limits.py

mutation: $(STAMP) ## mutation testing of the pure modules (slow: minutes; docs/testing.md)
	$(BIN)/python tools/mutation.py $(MUTATION_MODULES)

clean-demo: ## remove .contacto (the demo's embedded servers' data, logs, demo.env)
	rm -rf .contacto
