# The two commands of a fresh machine: `make serve` and `make test`.
# Both create the virtual environment first (only when pyproject.toml changed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint typecheck unit clean models bench

# Serving needs only the package; the tests also need the dev tools and TensorFlow
# (servekit optimize is tested end to end).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev,optimize]'
	touch $@

venv: $(VENV)/.installed-dev

serve: $(VENV)/.installed
	$(BIN)/servekit serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

# Rebuild the committed test and demo models (needs TensorFlow: pip install '.[optimize]').
models: $(VENV)/.installed-dev
	$(BIN)/python scripts/make_models.py

# benchmarks/run.py: raw interpreter, bare ASGI floor and servekit in one run (~5 min).
bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
