# Contacto Billing. On a fresh machine: `make demo`, then `make test`.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Re-install when pyproject.toml changes (new dependency, new extra).
STAMP  := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo test lint venv clean-demo mutation

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,demo]'
	touch $@

# Uses DATABASE_URL / REDIS_URL when they answer, else embedded servers under ./.contacto.
# Extra options: make demo DEMO_ARGS='--keep-running --interval-s 1'
demo: $(STAMP)
	$(BIN)/contacto-billing demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy common config workers

# Mutation testing of pure modules against their own unit tests (docs/testing.md): mutmut, then
# tools/mutate_constants.py; fails below 95 % killed. Slow (4-5 minutes on 2 cores), so not in
# `make test` or CI. One line per module, MODULE=TEST[,TEST...]; one module alone:
#   make mutation MUTATION_MODULES=common/usage/decode.py=tests/unit/test_usage_decode.py
MUTATION_MODULES ?= \
	common/recharge/policy.py=tests/unit/test_policy.py \
	common/usage/decode.py=tests/unit/test_usage_decode.py

mutation: $(STAMP)
	$(BIN)/python tools/mutation.py $(MUTATION_MODULES)

clean-demo:
	rm -rf .contacto
