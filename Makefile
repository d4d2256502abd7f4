# The two commands of a fresh machine: `make serve` and `make test`.
# Both create the virtual environment first (only when pyproject.toml changed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint typecheck unit clean models

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/servekit serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests scripts

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

# Rebuild the committed test and demo models (needs TensorFlow: pip install '.[optimize]').
models: $(VENV)/.installed
	$(BIN)/python scripts/make_models.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
