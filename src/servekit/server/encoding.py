"""Fast JSON in and out (orjson), shared by every protocol adapter."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.responses import Response
from starlette.types import Send

from servekit.errors import BadInput
from servekit.server.strictjson import loads_strict
from servekit.tensors import Array, excerpt

_OPTS = orjson.OPT_SERIALIZE_NUMPY


def to_jsonable(arr: Array) -> Array | list[Any]:
    """An array orjson can write as-is (it has no float16 or object support)."""
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    if arr.dtype.kind in ("O", "S", "U"):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in arr.tolist()]
    if not arr.flags.c_contiguous:
        return np.ascontiguousarray(arr)
    return arr


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=_OPTS)


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        dumps(content), status_code=status, headers=headers, media_type="application/json"
    )


def parse_json(body: bytes) -> Any:
    return loads_strict(body)


def parse_json_object(body: bytes) -> dict[str, Any]:
    data = parse_json(body)
    if not isinstance(data, dict):
        raise BadInput(f"expected a JSON object, got {type(data).__name__}: {excerpt(data)}")
    return data


async def send_error(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer ``{"error": message}`` through a bare ASGI ``send`` (servekit's own layers,
    before any router)."""
    body = dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
