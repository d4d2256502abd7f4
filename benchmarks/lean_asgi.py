"""A bound, not a server: servekit's core behind the least HTTP code Python allows.

The bare floor (``bare_asgi.py``) measures uvicorn with no work at all. This app
measures what is left when servekit's own request path keeps only what inference
needs: it reads the body, decodes the plain form of the benchmark's protocol with orjson
(v1 ``instances``, V2 JSON ``data``, V2 binary), picks the model in the registry and
awaits ``ServedModel.submit`` (the same validation, batcher, instances and model metrics
as servekit), then writes the answer as two raw ASGI messages.

Everything else is left out: FastAPI's dispatch, the HTTP metrics, the body-size
limit, the client-disconnect watcher, strict JSON (duplicate keys), the rest of each
protocol (columnar v1, named inputs, output selection, ``parameters``), error answers
(an exception is uvicorn's bare 500) and Starlette's Request and Response. So its
numbers estimate the most a full-featured Python path on this stack could reach (from
one run, with batching on, as noisy as any other row): a target it misses by a margin
is out of reach for any rewrite of servekit's HTTP layer.

Any other request (lifespan, health, metadata) goes to servekit's own app, built from
the ``SERVEKIT_*`` environment like ``servekit serve``'s, so models load the same way.

    SERVEKIT_MODEL_PATH=repo uvicorn lean_asgi:app --app-dir benchmarks
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from servekit.repository import ModelRegistry
from servekit.server.app import create_app_from_env

Scope = dict[str, Any]
Message = dict[str, Any]

servekit_app = create_app_from_env()
registry: ModelRegistry = servekit_app.state.registry
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


async def app(scope: Scope, receive: Any, send: Any) -> None:
    path = scope.get("path", "")
    if scope["type"] != "http" or scope["method"] != "POST":
        await servekit_app(scope, receive, send)
        return
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        body = await _body(receive)
        await _v1(path[len("/v1/models/") : -len(":predict")], body, send)
    elif path.startswith("/v2/models/") and path.endswith("/infer"):
        body = await _body(receive)
        header_length = _header(scope, b"inference-header-content-length")
        name = path[len("/v2/models/") : -len("/infer")]
        if header_length is None:
            await _v2_json(name, body, send)
        else:
            await _v2_binary(name, body, int(header_length), send)
    else:
        await servekit_app(scope, receive, send)


async def _v1(name: str, body: bytes, send: Any) -> None:
    model = registry.get(name)
    (spec,) = model.inputs
    x = np.asarray(orjson.loads(body)["instances"], dtype=spec.dtype)
    (y,) = (await model.submit({spec.name: x})).values()
    await _answer(send, orjson.dumps({"predictions": y}, option=_NUMPY), b"application/json")


async def _v2_json(name: str, body: bytes, send: Any) -> None:
    model = registry.get(name)
    (spec,) = model.inputs
    (entry,) = orjson.loads(body)["inputs"]
    x = np.asarray(entry["data"], dtype=spec.dtype).reshape(entry["shape"])
    (out,) = model.outputs
    (y,) = (await model.submit({spec.name: x})).values()
    answer = {
        "model_name": name,
        "model_version": str(model.version),
        "outputs": [
            {"name": out.name, "datatype": "FP32", "shape": list(y.shape), "data": y.reshape(-1)}
        ],
    }
    await _answer(send, orjson.dumps(answer, option=_NUMPY), b"application/json")


async def _v2_binary(name: str, body: bytes, header_length: int, send: Any) -> None:
    model = registry.get(name)
    (spec,) = model.inputs
    (entry,) = orjson.loads(body[:header_length])["inputs"]
    x = np.frombuffer(body, dtype=spec.dtype, offset=header_length).reshape(entry["shape"])
    (out,) = model.outputs
    (y,) = (await model.submit({spec.name: x})).values()
    y = np.ascontiguousarray(y)
    output = {
        "name": out.name,
        "datatype": "FP32",
        "shape": list(y.shape),
        "parameters": {"binary_data_size": y.nbytes},
    }
    header = orjson.dumps(
        {"model_name": name, "model_version": str(model.version), "outputs": [output]}
    )
    extra = [(b"inference-header-content-length", str(len(header)).encode())]
    await _answer(send, header + y.tobytes(), b"application/octet-stream", extra)


async def _body(receive: Any) -> bytes:
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _header(scope: Scope, key: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == key), None)


async def _answer(
    send: Any, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
