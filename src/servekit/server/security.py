"""Access control and admission at the edge, as pure ASGI middleware.

- API keys: when configured, every model endpoint (``/v1/...``, ``/v2``, ``/v2/models/...``)
  needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Keys are compared in
  constant time, and every key is compared, so timing tells nothing about which
  matched. Health, metrics, docs and the admin API (its own token) are outside.
- In-flight limit: past ``max_inflight_requests`` model requests at once, 503 with
  ``Retry-After`` before the body is read.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from servekit.server.encoding import dumps
from servekit.server.paths import route_path

_OPEN_PREFIXES = ("/v2/health/", "/v2/repository/")


def is_model_path(path: str) -> bool:
    """Paths that serve model data (guarded by API keys and the in-flight limit)."""
    if path.startswith(_OPEN_PREFIXES):
        return False
    return path.startswith("/v1/") or path == "/v2" or path.startswith("/v2/")


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


async def _reject(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]
) -> None:
    body = dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ModelAccess:
    def __init__(self, app: ASGIApp, api_keys: list[bytes], max_inflight: int) -> None:
        self.app = app
        self.api_keys = api_keys
        self.max_inflight = max_inflight
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
        if scope["type"] != "http" or not is_model_path(route_path(scope)):
            await self.app(scope, receive, send)
            return
        if self.api_keys and not self._key_ok(presented_key(scope)):
            given = presented_key(scope) is not None
            await _reject(
                send,
                401,
                "invalid API key"
                if given
                else "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if self.max_inflight and self.inflight >= self.max_inflight:
            await _reject(
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
