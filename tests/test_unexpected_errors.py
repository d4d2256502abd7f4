"""An exception servekit did not expect: one 500 naming its type, and one bounded
traceback in the log (not a second, full one from the server).

No input is known to raise one (tests/test_hostile.py holds the catalogue), so the
fault is a route added for the test: a RecursionError, whose full traceback is
thousands of lines.
"""

from __future__ import annotations

import logging

import httpx
import pytest

from conftest import REPO
from servekit.config import ServerSettings
from servekit.server.app import create_app
from servekit.server.errors import TRACEBACK_CHARS


def _recurse(n: int) -> int:
    return _recurse(n + 1) + 1


async def test_unexpected_exception_is_one_500_and_one_bounded_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(
        ServerSettings(model_path=REPO, model_control_mode="explicit", load_models=["digits"])
    )

    @app.get("/boom")
    async def boom() -> int:
        return _recurse(0)

    # raise_app_exceptions (httpx's default): an exception handed on to the server
    # fails the request here, as uvicorn would log it a second time.
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://servekit") as client,
    ):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            r = await client.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (RecursionError); see the server log"}
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1, [rec.getMessage()[:200] for rec in errors]
    text = errors[0].getMessage()
    assert "unhandled error on GET /boom" in text and "RecursionError" in text
    assert errors[0].exc_info is None
    assert len(text) <= TRACEBACK_CHARS + 200
