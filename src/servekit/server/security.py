"""Access control and admission at the edge, as pure ASGI middleware.

- API keys: when configured, every model endpoint (``/v1/...``, ``/v2``, ``/v2/models/...``)
  needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Keys are compared in
  constant time, and every key is compared, so timing tells nothing about which
  matched. So do ``/openapi.json`` (it names every model and carries example requests)
  unless ``docs_public``, and ``/metrics`` on the API's port (model names, traffic)
  unless ``metrics_public``. Health, the landing page, the docs pages and their assets
  (shells that name no model: a browser's navigation cannot send a key, so the pages
  ask for one and fetch the document with it) and the admin API (its own token) are
  outside.
- In-flight limit: past ``max_inflight_requests`` model requests at once, 503 with
  ``Retry-After`` before the body is read.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from servekit.server.encoding import send_error
from servekit.server.paths import route_path

_OPEN_PREFIXES = ("/v2/health/", "/v2/repository/")


def is_model_path(path: str) -> bool:
    """Paths that serve model data (guarded by API keys and the in-flight limit)."""
    if path.startswith(_OPEN_PREFIXES):
        return False
    return path.startswith("/v1/") or path == "/v2" or path.startswith("/v2/")


def is_guarded(path: str, guarded_paths: frozenset[str]) -> bool:
    """Whether ``path`` is one of ``guarded_paths`` or below one that ends in '/'."""
    if path in guarded_paths:
        return True
    return any(g.endswith("/") and path.startswith(g) for g in guarded_paths)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def presented_key(scope: Scope) -> bytes | None:
    auth = _header(scope, b"authorization")
    if auth is not None:
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and token:
            return token.strip()
    return _header(scope, b"x-api-key")


class ModelAccess:
    def __init__(
        self,
        app: ASGIApp,
        api_keys: list[bytes],
        max_inflight: int,
        *,
        guarded_paths: frozenset[str] = frozenset(),
    ) -> None:
        """``guarded_paths``: paths other than the model endpoints that need a key
        (``/openapi.json``, ``/metrics``; one ending in '/' guards the paths below it);
        the in-flight limit is the models' only."""
        self.app = app
        self.api_keys = api_keys
        self.max_inflight = max_inflight
        self.guarded_paths = guarded_paths
        self.inflight = 0

    def _key_ok(self, given: bytes | None) -> bool:
        if given is None:
            return False
        ok = False
        for key in self.api_keys:  # no early exit: same work whichever key matches
            ok |= hmac.compare_digest(given, key)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Below the root path: behind a proxy that strips a prefix, the server puts it
        # in front of every path, and model paths must still be guarded.
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        model = is_model_path(path)
        if not model and not is_guarded(path, self.guarded_paths):
            await self.app(scope, receive, send)
            return
        if self.api_keys and not self._key_ok(presented_key(scope)):
            given = presented_key(scope) is not None
            await send_error(
                send,
                401,
                "invalid API key"
                if given
                else "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if not model:
            await self.app(scope, receive, send)
            return
        if self.max_inflight and self.inflight >= self.max_inflight:
            await send_error(
                send,
                503,
                f"server busy: {self.inflight} requests in flight (limit {self.max_inflight}); "
                "retry later",
                [(b"retry-after", b"1")],
            )
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


# The OpenAPI names of the two ways to send a key (the admin API's is FastAPI's
# "HTTPBearer"): Swagger UI's "Authorize" offers both and sends the one filled in.
API_KEY_SCHEMES: dict[str, dict[str, str]] = {
    "APIKeyBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (SERVEKIT_API_KEYS), sent as `Authorization: Bearer KEY`.",
    },
    "APIKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key (SERVEKIT_API_KEYS), sent as `X-API-Key: KEY`.",
    },
}


def declare_api_keys(schema: dict[str, Any], guarded_paths: frozenset[str]) -> dict[str, Any]:
    """Declare the key schemes, and that each guarded operation takes either one."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(API_KEY_SCHEMES)
    either: list[dict[str, list[str]]] = [{name: []} for name in API_KEY_SCHEMES]
    for path, ops in schema.get("paths", {}).items():
        if is_model_path(path) or is_guarded(path, guarded_paths):
            for op in ops.values():
                op["security"] = either
    return schema
