"""The `servekit optimize` command (registered by servekit.cli)."""

from __future__ import annotations


def optimize() -> None:
    """Convert a Keras or SavedModel model to TFLite (not implemented yet)."""
    raise SystemExit("servekit optimize is not implemented yet")
