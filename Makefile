# The two commands of a fresh machine: `make serve` and `make test`.
# Both install from the lock (uv.lock) into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PYTHON VENV
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint typecheck unit clean models bench lock venv install-serve install-dev
.PHONY: image-arm64 test-arm64

# Every install comes from the lock (uv.lock) through scripts/install.sh, which also
# serialises installs that run at the same moment. Serving needs only the package; the
# tests also need the dev tools and TensorFlow (servekit optimize is tested end to end).
# Each install is a no-op (well under a second) when the venv already matches the lock.
install-serve:
	@scripts/install.sh

install-dev:
	@scripts/install.sh dev optimize

venv: install-dev

serve: install-serve
	$(BIN)/servekit serve --host $(HOST) --port $(PORT)

lint: install-dev
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks

typecheck: install-dev
	$(BIN)/mypy

unit: install-dev
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

# arm64 (Raspberry Pi 4/5 class) on this x86-64 machine, under QEMU (docs/edge.md).
# image-arm64: the arm64 image from deploy/docker/Dockerfile, servekit:arm64 (as root).
# test-arm64: tests/test_arm64.py in full: the image form too (builds the arm64 image,
# about 6 minutes the first time and its base 3.5 more, and the amd64 one for the
# multi-platform name); `make test` runs only its smoke form (1-2.5 minutes).
image-arm64:
	scripts/build_arm64.sh

test-arm64: install-dev
	SERVEKIT_TEST_ARM64_IMAGE=1 $(BIN)/pytest -q -m arm64 tests/test_arm64.py $(PYTEST_ARGS)

# Rebuild the committed test and demo models (needs TensorFlow: pip install '.[optimize]').
models: install-dev
	$(BIN)/python scripts/make_models.py

# benchmarks/run.py: raw interpreter, bare ASGI floor and servekit in one run (~5 min).
bench:
	@scripts/install.sh dev optimize bench
	$(BIN)/python benchmarks/run.py

# Re-resolve every dependency to its newest allowed version (pyproject.toml's ranges) and
# write uv.lock; review the diff, run `make test`, commit both.
lock:
	@scripts/install.sh
	.tools/bin/uv lock --upgrade

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
