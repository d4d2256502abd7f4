"""``GET /``: a pointer for a person who types the server's address.

JSON for clients (curl sends ``Accept: */*``); a browser's navigation is sent to /docs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from conftest import REPO, free_port
from servekit import __version__
from servekit.config import ServerSettings
from servekit.server.app import create_app

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@asynccontextmanager
async def served(root_path: str = "", **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        ServerSettings(
            model_path=REPO, model_control_mode="explicit", load_models=["digits"], **settings
        )
    )
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://servekit") as client,
    ):
        yield client


async def test_root_answers_a_small_json_pointer() -> None:
    async with served() as c:
        r = await c.get("/")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["name"] == "servekit" and body["version"] == __version__
        links = body["links"]
        assert links["docs"] == "/docs" and links["models"] == "/v1/models"
        assert links["server_metadata"] == "/v2" and links["metrics"] == "/metrics"
        for link in links.values():  # every link answers
            assert (await c.get(link)).status_code == 200, link


async def test_a_browser_is_sent_to_the_docs() -> None:
    async with served() as c:
        r = await c.get("/", headers={"Accept": BROWSER})
        assert r.status_code == 307 and r.headers["location"] == "/docs"


async def test_root_path_and_metrics_port_shape_the_links() -> None:
    async with served(root_path="/api", metrics_port=free_port()) as c:
        body = (await c.get("/api/")).json()
        assert body["links"]["docs"] == "/api/docs" and "metrics" not in body["links"]
        r = await c.get("/api/", headers={"Accept": BROWSER})
        assert r.headers["location"] == "/api/docs"


async def test_root_is_open_with_api_keys_and_names_no_model() -> None:
    async with served(api_keys=["k"]) as c:
        r = await c.get("/")
        assert r.status_code == 200 and "digits" not in r.text
