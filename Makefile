# Contacto Billing. On a fresh machine: `make demo`, then `make test`.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Re-install when pyproject.toml changes (new dependency, new extra).
STAMP  := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo test lint venv clean-demo

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

clean-demo:
	rm -rf .contacto
