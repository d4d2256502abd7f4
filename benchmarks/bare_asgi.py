"""The bare HTTP floor: an ASGI app that does no work, served by uvicorn like servekit.

It reads the whole request body (as servekit must) and answers every request with the
same canned response: the bytes of a real servekit response for the same request,
read once at start from the file named by ``BARE_RESPONSE_FILE``, with the content
type in ``BARE_CONTENT_TYPE`` and, for V2 binary responses, the
``Inference-Header-Content-Length`` value in ``BARE_HEADER_LENGTH``. No routing, no
middleware, no JSON: whatever servekit does beyond this is its own cost.

    BARE_RESPONSE_FILE=resp.bin uvicorn bare_asgi:app --app-dir benchmarks
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


def _canned() -> tuple[bytes, list[tuple[bytes, bytes]]]:
    path = os.environ.get("BARE_RESPONSE_FILE")
    body = Path(path).read_bytes() if path else b'{"ok":true}'
    headers = [
        (b"content-type", os.environ.get("BARE_CONTENT_TYPE", "application/json").encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if header_length := os.environ.get("BARE_HEADER_LENGTH"):
        headers.append((b"inference-header-content-length", header_length.encode()))
    return body, headers


BODY, HEADERS = _canned()


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the body to its end, as a real server must
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
