"""``GET /``: a pointer for a person who types the server's address.

JSON for clients (curl sends ``Accept: */*``); a browser's navigation is sent to /docs.
"""

from __future__ import annotations

from conftest import free_port
from conftest import serve_digits as served
from servekit import __version__

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


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
