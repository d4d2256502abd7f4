"""The `servekit bench` command: an async load generator for a running server."""

from __future__ import annotations


def bench() -> None:
    """Load-test a running servekit (not implemented yet)."""
    raise SystemExit("servekit bench is not implemented yet")
