"""Swagger UI (/docs) and ReDoc (/redoc) served from assets that ship with servekit.

FastAPI's own pages load their JavaScript, CSS, favicon and (ReDoc) Google Fonts from
public CDNs, so offline they are blank. These pages load only files from
``static/`` in this package, served at ``/docs/assets``:

- ``static/swagger-ui``: npm swagger-ui-dist (Apache-2.0), unmodified;
- ``static/redoc``: npm redoc (MIT), with its one external URL (a logo) patched out;
- ``static/servekit``: the small scripts that start them (and ask for an API key when
  the server needs one for the OpenAPI document).

``static/SOURCES.json`` records versions, licences, integrity and patches;
``scripts/vendor_docs_assets.py`` is how those files are produced. Both pages also send a
Content-Security-Policy that lets the browser load nothing from another origin, so a
future asset that tries to reach the internet is stopped by the browser and shows up as
a console error instead of a request.

The app must be created with ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages
would otherwise answer first).

Also here: each model's whole example request at ``/docs/examples/{model_name}/{api}``
(the document abridges large ones: server/examples.py) and ``GET /``, a pointer to all
of this (JSON; browsers are sent to /docs).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from servekit.errors import NotFound
from servekit.server.encoding import json_response
from servekit.server.examples import APIS, EXAMPLES_URL, Api

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"

# Everything from this origin only. Inline <style> and style attributes are needed by
# both UIs (React and styled-components set them); scripts are files only. ReDoc runs its
# search index in a Web Worker made from a blob: URL; Swagger UI's CSS draws icons from
# data: URLs.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    )
)

# FastAPI's defaults for Swagger UI, plus no online validator (it would send the spec's
# URL to validator.swagger.io) and the duration of each "Try it out" request.
SWAGGER_UI_DEFAULTS: dict[str, Any] = {
    "layout": "BaseLayout",
    "deepLinking": True,
    "showExtensions": True,
    "showCommonExtensions": True,
    "displayRequestDuration": True,
    "validatorUrl": None,
}


def static_dir() -> Path:
    """The folder of vendored assets inside the installed package."""
    return Path(str(resources.files("servekit.server") / "static"))


def _attr(value: Any) -> str:
    return html.escape(json.dumps(value), quote=True)


def swagger_ui_html(*, title: str, openapi_url: str, assets: str, config: dict[str, Any]) -> str:
    settings = {**SWAGGER_UI_DEFAULTS, **config, "url": openapi_url}
    t, assets = html.escape(title), html.escape(assets)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t} - Swagger UI</title>
<link rel="icon" type="image/png" href="{assets}/swagger-ui/favicon-32x32.png">
<link rel="stylesheet" href="{assets}/swagger-ui/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-config="{_attr(settings)}"></div>
<script src="{assets}/swagger-ui/swagger-ui-bundle.js"></script>
<script src="{assets}/servekit/api-key.js"></script>
<script src="{assets}/servekit/swagger-init.js"></script>
</body>
</html>
"""


def redoc_html(*, title: str, openapi_url: str, assets: str) -> str:
    t, assets = html.escape(title), html.escape(assets)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t} - ReDoc</title>
<link rel="icon" type="image/png" href="{assets}/swagger-ui/favicon-32x32.png">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<div id="redoc" data-spec-url="{html.escape(openapi_url)}" data-options="{_attr({})}"></div>
<script src="{assets}/redoc/redoc.standalone.js"></script>
<script src="{assets}/servekit/api-key.js"></script>
<script src="{assets}/servekit/redoc-init.js"></script>
</body>
</html>
"""


def _page(body: str) -> HTMLResponse:
    return HTMLResponse(
        body,
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


def install(
    app: FastAPI,
    example: Callable[[str, Api], dict[str, Any] | None],
    *,
    metrics_url: str | None,
) -> None:
    """Mount the assets at /docs/assets and serve /docs (Swagger UI), /redoc (ReDoc),
    each model's whole example (``example(name, api)``, None for an unknown model) and
    the landing response at /."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise RuntimeError(
            "create the app with FastAPI(docs_url=None, redoc_url=None): "
            "its default /docs and /redoc load their JavaScript from a CDN"
        )
    if app.openapi_url is None:
        return
    openapi_path = app.openapi_url
    folder = static_dir()
    if not (folder / "swagger-ui" / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(
            f"{folder} lacks the docs assets: servekit was built without its package data "
            "(pyproject.toml, [tool.setuptools.package-data] 'servekit.server')"
        )
    app.mount(ASSETS_URL, StaticFiles(directory=folder), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _page(
            swagger_ui_html(
                title=app.title,
                openapi_url=root + openapi_path,
                assets=root + ASSETS_URL,
                config=app.swagger_ui_parameters or {},
            )
        )

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _page(
            redoc_html(title=app.title, openapi_url=root + openapi_path, assets=root + ASSETS_URL)
        )

    @app.get(EXAMPLES_URL + "/{model_name}/{api}", include_in_schema=False)
    async def whole_example(model_name: str, api: str) -> Response:
        if api not in APIS:
            raise NotFound(f"no example API {api!r}: one of {', '.join(APIS)}")
        found = example(model_name, api)
        if found is None:
            raise NotFound(f"no ready model named {model_name!r}")
        return json_response(found)

    @app.get("/", include_in_schema=False)
    async def landing(request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        if _wants_html(request.headers.get("accept", "")):
            return RedirectResponse(root + DOCS_URL, status_code=307)
        links = {
            "docs": DOCS_URL,
            "redoc": REDOC_URL,
            "openapi": openapi_path,
            "models": "/v1/models",
            "server_metadata": "/v2",
            "ready": "/v2/health/ready",
        }
        if metrics_url is not None:
            links["metrics"] = metrics_url
        return json_response(
            {
                "name": app.title,
                "version": app.version,
                "links": {k: root + v for k, v in links.items()},
            }
        )


def _wants_html(accept: str) -> bool:
    """A browser's navigation (Accept: text/html, ...); curl and clients send */*."""
    return "text/html" in accept.lower()
