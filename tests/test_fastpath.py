"""The direct inference path (server/fastpath.py) is taken, and fails safe.

On the locked FastAPI and Starlette, predict and infer requests skip FastAPI's router
and answer as the model does. With the internals it reads missing or changed, the app
logs one warning and FastAPI's router answers every request exactly as the direct path
would. A changed dependency cannot be provoked otherwise, so the changes are
monkeypatched: route changes are shown only to the direct path (it reads
``effective_route_contexts``; FastAPI's router matches with its own objects). In-process,
with the app's lifespan.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRouter
from starlette.middleware.errors import ServerErrorMiddleware

from conftest import REPO, digits_rows, direct_predict
from servekit.config import ServerSettings
from servekit.server import fastpath
from servekit.server.app import create_app
from servekit.server.fastpath import ServekitAPI

PREDICT = "/v1/models/digits:predict"
PREDICT_VERSION = "/v1/models/digits/versions/1:predict"
INFER = "/v2/models/digits/infer"
INFER_VERSION = "/v2/models/digits/versions/1/infer"
X = digits_rows(3)
V2_INPUTS = {
    "inputs": [{"name": "pixels", "shape": [3, 64], "datatype": "FP32", "data": X.ravel().tolist()}]
}

# Every kind of inference answer: 200s on all four routes, 400s, 404s.
REQUESTS: list[tuple[str, Any]] = [
    (PREDICT, {"instances": X.tolist()}),
    (PREDICT_VERSION, {"inputs": {"pixels": X.tolist()}}),
    (INFER, V2_INPUTS),
    (INFER_VERSION, V2_INPUTS),
    (PREDICT, {"instances": "nope"}),
    (INFER, {"inputs": []}),
    ("/v1/models/nope:predict", {"instances": X.tolist()}),
    ("/v2/models/nope/infer", V2_INPUTS),
]
STATUSES = [200, 200, 200, 200, 400, 400, 404, 404]


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


def new_app() -> ServekitAPI:
    settings = ServerSettings(
        model_path=REPO, model_control_mode="explicit", load_models=["digits"]
    )
    app = create_app(settings)
    assert isinstance(app, ServekitAPI)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's lifespan through its ASGI interface, as a server runs it (this also
    builds the middleware stack, when the direct path is checked)."""
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
async def served(
    app: FastAPI, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with (
        lifespan(app),
        httpx.AsyncClient(transport=transport, base_url="http://servekit") as client,
    ):
        yield client


async def answers(app: FastAPI) -> list[tuple[int, Any]]:
    """Status and JSON of each of REQUESTS, on a fresh start of ``app``."""
    async with served(app) as client:
        return [
            (r.status_code, r.json())
            for r in [await client.post(path, json=body) for path, body in REQUESTS]
        ]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == fastpath.__name__ and r.levelno >= logging.WARNING
    ]


def close(got: object, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=1e-5, atol=1e-6)


def inference_posts() -> list[str]:
    return [f"POST {path}" for path, _ in REQUESTS]


# -- on the locked versions --------------------------------------------------------------


async def test_direct_path_is_taken_and_answers_as_the_model(
    spies: Spies, caplog: pytest.LogCaptureFixture
) -> None:
    app = new_app()
    assert not app.direct_path_active  # decided when the app starts
    async with served(app) as client:
        assert app.direct_path_active
        got = [await client.post(path, json=body) for path, body in REQUESTS]
        assert (await client.get("/v2/health/ready")).status_code == 200
    assert [r.status_code for r in got] == STATUSES, [r.text for r in got]
    # Only the GET went through FastAPI's outer layers and router.
    assert spies.outer == spies.router == ["GET /v2/health/ready"]
    assert app.direct_path_active
    assert warnings(caplog) == []

    want = direct_predict("digits", {"pixels": X})["probabilities"]
    close(got[0].json()["predictions"], want)
    close(got[1].json()["outputs"], want)
    for r in got[2:4]:
        (out,) = r.json()["outputs"]
        assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [3, 10])
        close(np.reshape(out["data"], out["shape"]), want)
    assert all("error" in r.json() for r in got[4:])


# -- with FastAPI's internals missing or changed -----------------------------------------


class Changed:
    """A route as a changed FastAPI could present it: some attributes replaced or absent."""

    def __init__(self, route: Any, missing: tuple[str, ...] = (), **replaced: Any) -> None:
        self._route = route
        self._missing = missing
        vars(self).update(replaced)

    def __getattr__(self, name: str) -> Any:
        if name in self._missing:
            raise AttributeError(f"{type(self._route).__name__!r} object has no attribute {name!r}")
        return getattr(self._route, name)


def show_routes(
    monkeypatch: pytest.MonkeyPatch, app: FastAPI, change: Callable[[Any], Any]
) -> None:
    """The direct path sees the inference routes through ``change``."""
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            shown = [
                change(c) if getattr(c, "operation_id", None) in fastpath.OPERATIONS else c
                for c in contexts()
            ]
            monkeypatch.setattr(route, "effective_route_contexts", lambda shown=shown: iter(shown))


def no_dependant(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> None:
    show_routes(monkeypatch, app, lambda r: Changed(r, missing=("dependant",)))


def dependant_without_lists(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> None:
    show_routes(
        monkeypatch, app, lambda r: Changed(r, dependant=Changed(r.dependant, query_params=None))
    )


def no_path_regex(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> None:
    show_routes(monkeypatch, app, lambda r: Changed(r, path_regex=None))


def convertors_without_convert(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> None:
    show_routes(
        monkeypatch,
        app,
        lambda r: Changed(r, param_convertors={k: object() for k in r.param_convertors}),
    )


def no_route_contexts(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> None:
    # Included routes are then neither effective contexts nor APIRoutes to the direct path.
    for route in app.routes:
        if callable(getattr(route, "effective_route_contexts", None)):
            assert getattr(route, "operation_id", None) is None
            monkeypatch.delattr(type(route), "effective_route_contexts")


def no_stack_marker(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> None:
    monkeypatch.setattr(ServekitAPI, "build_middleware_stack", FastAPI.build_middleware_stack)


def native_telemetry_moved(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> None:
    # FastAPI still has native telemetry (it takes telemetry=), just not where it is read.
    assert hasattr(app, fastpath.NATIVE_TELEMETRY_ATTR)
    monkeypatch.setattr(fastpath, "NATIVE_TELEMETRY_ATTR", "_renamed_telemetry")


# Each change, and a word the warning must name it by.
CHANGES = {
    "no dependant": (no_dependant, "dependant"),
    "dependant without lists": (dependant_without_lists, "query_params"),
    "path_regex None": (no_path_regex, "path_regex"),
    "convertors without convert": (convertors_without_convert, "param_convertors"),
    "no effective_route_contexts, no APIRoute": (no_route_contexts, "no route for"),
    "no middleware marker": (no_stack_marker, "marker"),
    "native telemetry moved": (native_telemetry_moved, "_renamed_telemetry"),
}


@pytest.mark.parametrize("name", list(CHANGES))
async def test_changed_internals_fall_back_to_fastapi_with_one_warning(
    name: str, monkeypatch: pytest.MonkeyPatch, spies: Spies, caplog: pytest.LogCaptureFixture
) -> None:
    reference = await answers(new_app())
    assert [status for status, _ in reference] == STATUSES
    assert spies.router == []
    change, word = CHANGES[name]
    app = new_app()
    change(monkeypatch, app)

    got = await answers(app)

    assert got == reference
    assert not app.direct_path_active
    assert spies.router == inference_posts()  # every one went through FastAPI's router
    (warning,) = warnings(caplog)
    assert word in warning, warning
    assert "direct inference path off" in warning


async def test_no_native_telemetry_is_off_on_a_fastapi_without_it(
    monkeypatch: pytest.MonkeyPatch, spies: Spies, caplog: pytest.LogCaptureFixture
) -> None:
    """A FastAPI older than its native telemetry (no telemetry= parameter) has nothing to
    record inference requests: the direct path stays on."""
    reference = await answers(new_app())
    takes = fastpath._takes
    monkeypatch.setattr(fastpath, "_takes", lambda f, p: p != "telemetry" and takes(f, p))
    monkeypatch.setattr(fastpath, "NATIVE_TELEMETRY_ATTR", "_no_such_telemetry")
    app = new_app()
    assert await answers(app) == reference
    assert app.direct_path_active
    assert spies.router == []
    assert warnings(caplog) == []


# -- failures while serving --------------------------------------------------------------


class FailingConvertor:
    def convert(self, value: str) -> Any:
        raise RuntimeError("convertor changed")


class FailingTelemetry:
    def enabled(self) -> bool:
        raise RuntimeError("telemetry switch changed")


def failing_convertors(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> None:
    show_routes(
        monkeypatch,
        app,
        lambda r: Changed(r, param_convertors={k: FailingConvertor() for k in r.param_convertors}),
    )


def failing_telemetry_switch(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> None:
    # A separate object: FastAPI's own __call__ keeps reading its real switch.
    monkeypatch.setattr(app, "_failing_telemetry", FailingTelemetry(), raising=False)
    monkeypatch.setattr(fastpath, "NATIVE_TELEMETRY_ATTR", "_failing_telemetry")


@pytest.mark.parametrize(
    ("change", "word"),
    [(failing_convertors, "convertor changed"), (failing_telemetry_switch, "switch changed")],
)
async def test_internals_failing_at_request_time_fall_back_for_good(
    change: Callable[[pytest.MonkeyPatch, FastAPI], None],
    word: str,
    monkeypatch: pytest.MonkeyPatch,
    spies: Spies,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reference = await answers(new_app())
    app = new_app()
    change(monkeypatch, app)
    async with served(app) as client:
        assert app.direct_path_active  # the check passed: the failure comes with a request
        got = [await client.post(path, json=body) for path, body in REQUESTS]
    assert [(r.status_code, r.json()) for r in got] == reference
    assert not app.direct_path_active
    assert spies.router == inference_posts()
    (warning,) = warnings(caplog)
    assert word in warning, warning


@pytest.mark.parametrize("change", [None, no_stack_marker], ids=["direct", "fastapi"])
async def test_an_endpoint_error_is_answered_once_as_before(
    change: Callable[[pytest.MonkeyPatch, FastAPI], None] | None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception from the endpoint is not a failure of the direct path: the app's
    500 handler answers, the endpoint runs once, and the path stays as it was."""
    app = new_app()
    if change is not None:
        change(monkeypatch, app)
    calls = []

    def get(*args: Any) -> Any:
        calls.append(args)
        raise RuntimeError("model lookup failed")

    monkeypatch.setattr(app.state.registry, "get", get)
    async with served(app, raise_app_exceptions=False) as client:
        r = await client.post(PREDICT, json={"instances": X.tolist()})
    assert r.status_code == 500
    assert r.json() == {"error": r.json()["error"]} and "RuntimeError" in r.json()["error"]
    assert calls == [("digits", None)]
    assert app.direct_path_active is (change is None)
    assert len(warnings(caplog)) == (change is not None)
