#!/usr/bin/env bash
# Installs servekit into $VENV (default .venv) from the lock, uv.lock, and nothing else.
#
#   scripts/install.sh              # serving: servekit and its runtime dependencies
#   scripts/install.sh dev optimize # the test environment (extras of pyproject.toml)
#
# uv itself is pinned here and bootstrapped with pip into $TOOLS (default .tools), so a
# fresh machine needs only python3 with venv. `--locked` refuses a lock that no longer
# matches pyproject.toml (run `make lock`), so every install resolves the same versions,
# today and in a month. The install is "inexact": a serve install keeps the test
# packages of an earlier test install. Two installs started together (make serve and
# make test) take turns on one file lock instead of writing the venv at the same time.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TOOLS=${TOOLS:-.tools}

extras=()
for extra in "$@"; do
  extras+=(--extra "$extra")
done

exec 9>".install.lock"
flock 9

# `uv --version` prints "uv 0.13.9 (x86_64-unknown-linux-gnu)": compare its first two words.
installed=$("$TOOLS/bin/uv" --version 2>/dev/null | cut -d' ' -f1,2 || true)
if [ "$installed" != "uv $UV_VERSION" ]; then
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi

UV_PROJECT_ENVIRONMENT="$VENV" UV_PYTHON="$PYTHON" UV_PYTHON_DOWNLOADS=never \
  "$TOOLS/bin/uv" sync --locked --inexact --quiet "${extras[@]}"
