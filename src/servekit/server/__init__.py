"""The HTTP edge: FastAPI app, protocol adapters, error table."""

from servekit.server.app import create_app

__all__ = ["create_app"]
