"""servekit's inference router (server/inference.py, server/edge.py), in-process.

The four inference POSTs are served by servekit's router inside servekit's own
middleware, without entering FastAPI; they answer exactly as FastAPI's routes for them
do (the same handlers, reached through FastAPI's router, are the reference), errors
included, with the HTTP metrics' labels of FastAPI's route templates. Everything else
is FastAPI's, with the app's lifespan run through its ASGI interface as a server does.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi.routing import APIRouter
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.routing import compile_path

from conftest import REPO, digits_rows, direct_predict
from servekit.config import ServerSettings
from servekit.server import v1, v2, v2_codec
from servekit.server.app import create_app
from servekit.server.edge import ServekitAPI
from servekit.server.paths import compile_template

X = digits_rows(3)
V2_JSON = {
    "inputs": [{"name": "pixels", "shape": [3, 64], "datatype": "FP32", "data": X.ravel().tolist()}]
}
BINARY_HEADER = (
    b'{"inputs": [{"name": "pixels", "shape": [3, 64], "datatype": "FP32", '
    b'"parameters": {"binary_data_size": 768}}], "parameters": {"binary_data_output": true}}'
)
JSON = {"content-type": "application/json"}


def binary(header: bytes, data: bytes) -> tuple[bytes, dict[str, str]]:
    return header + data, {
        v2_codec.HEADER_LENGTH: str(len(header)),
        "content-type": v2_codec.BINARY_CONTENT_TYPE,
    }


def json_body(body: Any) -> tuple[bytes, dict[str, str]]:
    return orjson.dumps(body), JSON


# Every kind of inference answer: each route, each wire format, and each error the
# handlers give (bad JSON, bad inputs, unknown model, unknown or malformed version).
REQUESTS: dict[str, tuple[str, tuple[bytes, dict[str, str]]]] = {
    "v1 rows": ("/v1/models/digits:predict", json_body({"instances": X.tolist()})),
    "v1 columns, version": (
        "/v1/models/digits/versions/1:predict",
        json_body({"inputs": {"pixels": X.tolist()}}),
    ),
    "v2 json": ("/v2/models/digits/infer", json_body(V2_JSON)),
    "v2 json, version": ("/v2/models/digits/versions/1/infer", json_body(V2_JSON)),
    "v2 binary": ("/v2/models/digits/infer", binary(BINARY_HEADER, X.tobytes())),
    "v2 raw": ("/v2/models/digits/infer", binary(b"", X.tobytes())),
    "v1 bad rows": ("/v1/models/digits:predict", json_body({"instances": "nope"})),
    "v1 not json": ("/v1/models/digits:predict", (b"{nope", JSON)),
    "v1 duplicate key": ("/v1/models/digits:predict", (b'{"instances": [], "instances": 1}', JSON)),
    "v2 no inputs": ("/v2/models/digits/infer", json_body({"inputs": []})),
    "v2 short binary": ("/v2/models/digits/infer", binary(BINARY_HEADER, b"\0" * 10)),
    "v1 unknown model": ("/v1/models/nope:predict", json_body({"instances": X.tolist()})),
    "v2 unknown model": ("/v2/models/nope/infer", json_body(V2_JSON)),
    "v1 unknown version": ("/v1/models/digits/versions/7:predict", json_body({"instances": [1]})),
    "v2 version not a number": ("/v2/models/digits/versions/x/infer", json_body(V2_JSON)),
}
STATUSES = {
    "v1 rows": 200,
    "v1 columns, version": 200,
    "v2 json": 200,
    "v2 json, version": 200,
    "v2 binary": 200,
    "v2 raw": 200,
    "v1 bad rows": 400,
    "v1 not json": 400,
    "v1 duplicate key": 400,
    "v2 no inputs": 400,
    "v2 short binary": 400,
    "v1 unknown model": 404,
    "v2 unknown model": 404,
    "v1 unknown version": 404,
    "v2 version not a number": 404,
}
TEMPLATES = {
    "/v1/models/digits:predict": "/v1/models/{model_name}:predict",
    "/v1/models/nope:predict": "/v1/models/{model_name}:predict",
    "/v1/models/digits/versions/1:predict": "/v1/models/{model_name}/versions/{version}:predict",
    "/v1/models/digits/versions/7:predict": "/v1/models/{model_name}/versions/{version}:predict",
    "/v2/models/digits/infer": "/v2/models/{model_name}/infer",
    "/v2/models/nope/infer": "/v2/models/{model_name}/infer",
    "/v2/models/digits/versions/1/infer": "/v2/models/{model_name}/versions/{version}/infer",
    "/v2/models/digits/versions/x/infer": "/v2/models/{model_name}/versions/{version}/infer",
}


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The app runs in this process: its lifespan sets the switch interval and the GC
    thresholds, and SERVEKIT_* settings must not leak in."""
    for key in [k for k in os.environ if k.startswith("SERVEKIT_")]:
        monkeypatch.delenv(key)
    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    yield
    sys.setswitchinterval(interval)
    gc.set_threshold(*thresholds)


class Spies:
    """The HTTP requests that entered FastAPI's router and its outermost layer."""

    def __init__(self) -> None:
        self.router: list[str] = []
        self.outer: list[str] = []

    def clear(self) -> None:
        self.router.clear()
        self.outer.clear()


@pytest.fixture()
def spies(monkeypatch: pytest.MonkeyPatch) -> Spies:
    seen = Spies()

    def spy(cls: type, calls: list[str]) -> None:
        call = cls.__call__

        async def spied(self: Any, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                calls.append(f"{scope['method']} {scope['path']}")
            await call(self, scope, receive, send)

        monkeypatch.setattr(cls, "__call__", spied)

    spy(APIRouter, seen.router)
    spy(ServerErrorMiddleware, seen.outer)
    return seen


def new_app(**settings: Any) -> ServekitAPI:
    return create_app(
        ServerSettings(
            model_path=REPO, model_control_mode="explicit", load_models=["digits"], **settings
        )
    )


def via_fastapi(app: ServekitAPI) -> None:
    """Every inference POST goes through FastAPI's router, as while its native
    telemetry records them: the reference answers."""
    app.state.native_telemetry.to_fastapi = lambda: True


@asynccontextmanager
async def lifespan(app: ServekitAPI) -> AsyncIterator[None]:
    """The app's lifespan through its ASGI interface, as a server runs it."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))

    async def step(message: str) -> None:
        await to_app.put({"type": f"lifespan.{message}"})
        answer = asyncio.ensure_future(from_app.get())
        await asyncio.wait({answer, task}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            task.result()  # the app's error, if it raised
            raise AssertionError(f"the app's lifespan ended before lifespan.{message} was done")
        assert answer.result() == {"type": f"lifespan.{message}.complete"}, answer.result()

    await step("startup")
    try:
        yield
    finally:
        await step("shutdown")
        await task


@asynccontextmanager
async def served(app: ServekitAPI, root_path: str = "") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with (
        lifespan(app),
        httpx.AsyncClient(transport=transport, base_url="http://servekit") as client,
    ):
        yield client


async def probe(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> None:
    """The first inference POST after the start goes to FastAPI, to ask whether its
    native telemetry records them (server/edge.py); the next ones, within a second,
    do not."""
    r = await client.post("/v2/models/nope/infer", json=V2_JSON, headers=headers)
    assert r.status_code == 404


Answer = tuple[int, str | None, str | None, bytes]


def answer(r: httpx.Response) -> Answer:
    return (
        r.status_code,
        r.headers.get("content-type"),
        r.headers.get(v2_codec.HEADER_LENGTH),
        r.content,
    )


async def answers(app: ServekitAPI, spies: Spies) -> dict[str, Answer]:
    """Every one of REQUESTS on a fresh start of ``app``."""
    async with served(app) as client:
        await probe(client)
        spies.clear()
        got = {}
        for name, (path, (body, headers)) in REQUESTS.items():
            got[name] = answer(await client.post(path, content=body, headers=headers))
    return got


def close(got: object, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=1e-5, atol=1e-6)


# -- served by servekit's router, as FastAPI would ---------------------------------------


async def test_inference_posts_never_enter_fastapi(spies: Spies) -> None:
    app = new_app()
    async with served(app) as client:
        await probe(client)
        assert spies.router == spies.outer == ["POST /v2/models/nope/infer"]
        spies.clear()
        for path, (body, headers) in REQUESTS.values():
            await client.post(path, content=body, headers=headers)
        assert (await client.get("/v2/health/ready")).status_code == 200
    # Only the GET went through FastAPI's outer layers and its router.
    assert spies.outer == spies.router == ["GET /v2/health/ready"]


async def test_router_answers_as_fastapis_routes(spies: Spies) -> None:
    got = await answers(new_app(), spies)
    assert spies.router == []
    reference_app = new_app()
    via_fastapi(reference_app)
    reference = await answers(reference_app, spies)
    assert len(spies.router) == len(REQUESTS)

    assert {name: a[0] for name, a in got.items()} == STATUSES
    assert got == reference
    for name, (status, content_type, _, body) in got.items():
        if status != 200:
            assert content_type == "application/json", name
            assert set(httpx.Response(status, content=body).json()) == {"error"}, name


async def test_answers_are_the_models(spies: Spies) -> None:
    got = await answers(new_app(), spies)
    want = direct_predict("digits", {"pixels": X})["probabilities"]
    close(httpx.Response(200, content=got["v1 rows"][3]).json()["predictions"], want)
    close(httpx.Response(200, content=got["v1 columns, version"][3]).json()["outputs"], want)
    for name in ("v2 json", "v2 json, version"):
        (out,) = httpx.Response(200, content=got[name][3]).json()["outputs"]
        assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [3, 10])
        close(np.reshape(out["data"], out["shape"]), want)
    for name in ("v2 binary", "v2 raw"):
        _, content_type, header_length, body = got[name]
        assert content_type == v2_codec.BINARY_CONTENT_TYPE and header_length is not None
        data = body[int(header_length) :]
        close(np.frombuffer(data, dtype=np.float32).reshape(3, 10), want)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_get_fastapis_405(method: str, spies: Spies) -> None:
    async with served(new_app()) as client:
        for path in ("/v1/models/digits:predict", "/v2/models/digits/versions/1/infer"):
            r = await client.request(method, path)
            assert r.status_code == 405, r.text
            assert r.json() == {"error": "Method Not Allowed"}
            assert r.headers["allow"] == "POST"
    assert len(spies.router) == 2


@pytest.mark.parametrize("route", ["router", "fastapi"])
async def test_body_over_the_limit_is_413(route: str) -> None:
    app = new_app(max_body_bytes=1024)
    if route == "fastapi":
        via_fastapi(app)
    big = b"[" + b"0," * 1024 + b"0]"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for i in range(0, len(big), 300):
            yield big[i : i + 300]

    async with served(app) as client:
        for path in ("/v1/models/digits:predict", "/v2/models/digits/infer"):
            for content in (big, chunks()):
                r = await client.post(path, content=content, headers=JSON)
                assert r.status_code == 413, r.text
                assert r.json() == {"error": "request body is over the limit of 1024 bytes"}
                assert r.headers["connection"] == "close"


async def test_api_keys_are_asked_for_inference(spies: Spies) -> None:
    app = new_app(api_keys=["k1", "k2"])
    body, headers = REQUESTS["v1 rows"][1]
    path = REQUESTS["v1 rows"][0]
    async with served(app) as client:
        await probe(client, {"X-API-Key": "k1"})
        spies.clear()
        r = await client.post(path, content=body, headers=headers)
        assert r.status_code == 401 and "missing API key" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = await client.post(path, content=body, headers={**headers, "X-API-Key": "k3"})
        assert (r.status_code, r.json()) == (401, {"error": "invalid API key"})
        r = await client.post(path, content=body, headers={**headers, "X-API-Key": "k2"})
        assert r.status_code == 200
        r = await client.post(
            "/v2/models/digits/infer", json=V2_JSON, headers={"Authorization": "Bearer k1"}
        )
        assert r.status_code == 200
    assert spies.router == []


async def test_metrics_label_inference_by_fastapis_route_templates(spies: Spies) -> None:
    app = new_app()
    async with served(app) as client:
        await probe(client)
        for path, (body, headers) in REQUESTS.values():
            await client.post(path, content=body, headers=headers)
        await client.post("/v2/models/a/b/infer", json=V2_JSON)  # no route: 'none'
        text = (await client.get("/metrics")).text
    counted = {
        (m["handler"], m["status"]): float(m["n"])
        for m in re.finditer(
            r'^http_requests_total\{handler="(?P<handler>[^"]*)",method="POST",'
            r'status="(?P<status>\d+)"\} (?P<n>\S+)$',
            text,
            re.MULTILINE,
        )
    }
    want: dict[tuple[str, str], float] = {("/v2/models/{model_name}/infer", "404"): 1.0}
    for name, (path, _) in REQUESTS.items():
        key = (TEMPLATES[path], str(STATUSES[name]))
        want[key] = want.get(key, 0.0) + 1
    want[("none", "404")] = 1.0
    assert counted == want


async def test_root_path_is_below_the_routes(spies: Spies) -> None:
    """Behind a proxy that strips a prefix (uvicorn --root-path /api), the server's
    paths start with the prefix; routes and metrics match below it."""
    app = new_app()
    async with served(app, root_path="/api") as client:
        await probe(client)
        spies.clear()
        path, (body, headers) = REQUESTS["v1 rows"]
        r = await client.post("/api" + path, content=body, headers=headers)
        assert r.status_code == 200, r.text
        r = await client.post("/api/v2/models/digits/infer", json=V2_JSON)
        assert r.status_code == 200, r.text
        assert (await client.get("/api/v2/health/ready")).status_code == 200
        text = (await client.get("/api/metrics")).text
    assert spies.router == ["GET /api/v2/health/ready", "GET /api/metrics"]
    assert 'handler="/v1/models/{model_name}:predict",method="POST",status="200"} 1.0' in text
    assert 'handler="/v2/models/{model_name}/infer",method="POST",status="200"} 1.0' in text


async def test_api_keys_guard_model_paths_below_a_root_path() -> None:
    app = new_app(api_keys=["k"])
    key = {"X-API-Key": "k"}
    async with served(app, root_path="/api") as client:
        await probe(client, key)
        path, (body, headers) = REQUESTS["v1 rows"]
        r = await client.post("/api" + path, content=body, headers=headers)
        assert r.status_code == 401, r.text
        assert (await client.get("/api/v2/models/digits")).status_code == 401
        r = await client.post("/api" + path, content=body, headers={**headers, **key})
        assert r.status_code == 200, r.text
        assert (await client.get("/api/v2/health/ready")).status_code == 200  # open


@pytest.mark.parametrize("route", ["router", "fastapi"])
async def test_an_unexpected_error_is_answered_500_once(
    route: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = new_app()
    if route == "fastapi":
        via_fastapi(app)
    calls = []

    def get(*args: Any) -> Any:
        calls.append(args)
        raise RuntimeError("model lookup failed")

    # An exception handed on to the server fails the request here (the server would log
    # it a second time): neither route does.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://s") as c:
        await probe(c)
        monkeypatch.setattr(app.state.registry, "get", get)
        r = await c.post("/v1/models/digits:predict", json={"instances": X.tolist()})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (RuntimeError); see the server log"}
    assert calls == [("digits", None)]
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and "model lookup failed" in logged[0].getMessage(), logged


async def test_a_client_that_leaves_cancels_its_queued_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The HTTP adapter's disconnect is the data plane's cancellation signal: the queued
    request is cancelled and the (unread) answer is 499."""
    app = new_app()
    queued = asyncio.Event()
    cancelled = asyncio.Event()
    leave = asyncio.Event()

    async def never() -> Any:
        queued.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with lifespan(app):
        model = app.state.registry.get("digits")
        monkeypatch.setattr(model, "submit", lambda *a, **k: never())
        body = REQUESTS["v1 rows"][1][0]
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await leave.wait()
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/models/digits:predict",
            "raw_path": b"/v1/models/digits:predict",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
            "server": ("servekit", 80),
            "client": ("127.0.0.1", 5000),
        }
        app.state.native_telemetry.to_fastapi = lambda: False
        request = asyncio.create_task(app(scope, receive, send))
        await queued.wait()
        leave.set()
        await asyncio.wait_for(request, 5)
    assert cancelled.is_set()
    assert sent[0]["status"] == 499
    assert b"disconnected" in sent[1]["body"]


# -- the router's own path patterns ------------------------------------------------------


def test_fastapi_documents_the_routes_the_router_serves() -> None:
    posts = {
        path: ops["post"]["operationId"]
        for path, ops in new_app().openapi()["paths"].items()
        if "post" in ops
    }
    assert {posts[template] for template in TEMPLATES.values()} == {
        "v1_predict",
        "v1_predict_version",
        "v2_infer",
        "v2_infer_version",
    }
    assert {r.template.replace(":segment}", "}") for r in (*v1.ROUTES, *v2.ROUTES)} == set(
        TEMPLATES.values()
    )


PATHS = [
    "/v1/models/digits:predict",
    "/v1/models/a.b-c_d:predict",
    "/v1/models/digits/versions/1:predict",
    "/v1/models/digits/versions/01:predict",
    "/v1/models/digits:predict/",
    "/v1/models/a:b:predict",
    "/v1/models/:predict",
    "/v1/models/a/b:predict",
    "/v1/models/digits/versions/1/2:predict",
    "/v1/models/digits/versions/:predict",
    "/v1/models/digits:predictx",
    "/v2/models/digits/infer",
    "/v2/models/digits:x/infer",
    "/v2/models/digits/versions/1/infer",
    "/v2/models/digits/versions/a:b/infer",
    "/v2/models//infer",
    "/v2/models/a/b/infer",
    "/v2/models/digits/infer/",
    "/v2/models/digits/versions//infer",
    "/v2/models/digits/versions/1/2/infer",
    "/v2/models/digits/ready",
    "/v2/models/d%20i/infer",
    "/v2/models/d i/infer",
    "/v2/models/d.*/infer",
]


@pytest.mark.parametrize("route", [*v1.ROUTES, *v2.ROUTES], ids=lambda r: r.template)
def test_patterns_match_what_starlette_matches(route: Any) -> None:
    starlette_regex, _, _ = compile_path(route.template)
    ours = compile_template(route.template)
    for path in PATHS:
        theirs = starlette_regex.match(path)
        mine = ours.match(path)
        assert (mine is None) == (theirs is None), path
        if mine is not None and theirs is not None:
            assert mine.groupdict() == theirs.groupdict(), path
