"""servekit's own router for the inference POSTs, and what their handlers are given.

The predict and infer handlers (``v1.py``, ``v2.py``) need only the body, the headers,
the path's model name and version, and a cancellation signal: an ``InferenceCall``.
``InferenceRouter`` serves the four inference POSTs with them directly (its own path
patterns, its own body reading, servekit's error table), as pure ASGI; FastAPI declares
the same routes with the same handlers, for the OpenAPI document, for the requests its
native telemetry records, and for anything else FastAPI answers (405 to other methods).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from servekit.dataplane import Cancelled, DataPlane
from servekit.errors import ClientDisconnected, PayloadTooLarge
from servekit.server.errors import response_for
from servekit.server.limits import client_gone
from servekit.server.paths import compile_template, route_path


@dataclass(frozen=True, slots=True)
class InferenceCall:
    """One inference POST, as its handler sees it (whichever router matched it)."""

    plane: DataPlane
    body: bytes
    headers: Headers
    model_name: str
    version: str | None  # None: the newest ready version
    cancelled: Cancelled  # returns when the client has gone
    max_body_bytes: int  # also the limit for a decompressed body
    max_json_bytes: int  # the limit for JSON (V2: its JSON part)


Handler = Callable[[InferenceCall], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class InferenceRoute:
    """A path template (as FastAPI declares it, and as the HTTP metrics label it) and
    the handler that serves POSTs to it."""

    template: str
    handler: Handler
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", compile_template(self.template))


async def call_from_request(
    request: Request, model_name: str, version: str | None
) -> InferenceCall:
    """The ``InferenceCall`` of an inference POST that FastAPI's router serves."""
    state = request.app.state
    watch = getattr(state, "native_telemetry", None)  # set by create_app
    if watch is not None:
        watch.observe()  # FastAPI serves this one: is its telemetry recording it?
    return InferenceCall(
        plane=state.dataplane,
        body=await request.body(),
        headers=request.headers,
        model_name=model_name,
        version=version,
        cancelled=client_gone(request.receive),
        max_body_bytes=state.settings.max_body_bytes,
        max_json_bytes=state.settings.max_json_bytes,
    )


class InferenceRouter:
    """Serves POSTs to the inference routes without FastAPI's per-request machinery.

    ``match`` finds a request's route by servekit's own patterns (``paths.py``), and
    ``serve`` reads the body, calls the handler and sends its response; an exception is
    answered by the error table (``server/errors.py``), an unexpected one logged and
    answered 500, as FastAPI's handlers would. It sits inside servekit's HTTP layers
    (metrics, CORS, access, body size), as FastAPI does.
    """

    def __init__(
        self,
        routes: Sequence[InferenceRoute],
        plane: DataPlane,
        max_body_bytes: int,
        max_json_bytes: int,
    ) -> None:
        self.routes = tuple(routes)
        self.plane = plane
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_json_bytes

    def match(self, scope: Scope) -> tuple[InferenceRoute, dict[str, str]] | None:
        """The route a POST's path matches, with its path parameters; None: not one of
        the inference routes."""
        path = route_path(scope)
        for route in self.routes:
            m = route.pattern.match(path)
            if m is not None:
                return route, m.groupdict()
        return None

    async def serve(
        self,
        route: InferenceRoute,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        try:
            call = InferenceCall(
                plane=self.plane,
                body=await read_body(receive),
                headers=Headers(scope=scope),
                model_name=params["model_name"],
                version=params.get("version"),
                cancelled=client_gone(receive),
                max_body_bytes=self.max_body_bytes,
                max_json_bytes=self.max_json_bytes,
            )
            response = await route.handler(call)
        except Exception as exc:
            response = response_for(exc, scope["method"], scope["path"])
        await response(scope, receive, send)


# Bodies from this size on are parsed in a worker thread: below it the hop costs more
# than the parse (orjson reads 64 KiB in about 0.1 ms).
OFF_LOOP_BYTES = 64 * 1024
# Two threads: the decodes of large bodies that run at once, and so the memory they hold.
_DECODE_THREADS = 2
_decoder: ThreadPoolExecutor | None = None

P = ParamSpec("P")
T = TypeVar("T")


async def parse_off_loop(size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``: on the event loop for a small body (``size`` bytes),
    in a decoder thread for a large one, so a large body never stalls the loop (health
    checks, other requests). The JSON decoders release the GIL in their C parts and at
    Python's switch interval elsewhere."""
    if size < OFF_LOOP_BYTES:
        return fn(*args, **kwargs)
    global _decoder
    if _decoder is None:
        _decoder = ThreadPoolExecutor(_DECODE_THREADS, thread_name_prefix="servekit-decode")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decoder, functools.partial(fn, *args, **kwargs))


def check_json_size(size: int, limit: int) -> None:
    """413 for a JSON body (V2: its JSON part) over ``limit`` bytes, before it is parsed."""
    if size > limit:
        raise PayloadTooLarge(
            f"the JSON request is {size} bytes, over the limit of {limit} bytes for JSON "
            "(SERVEKIT_MAX_JSON_BYTES); send large tensors as binary data (V2's binary "
            "tensor extension, or gRPC)"
        )


async def read_body(receive: Receive) -> bytes:
    """The whole request body; ``ClientDisconnected`` if the client leaves first."""
    message = await receive()
    chunks: list[bytes] = []
    while True:
        if message["type"] != "http.request":  # http.disconnect
            raise ClientDisconnected("the client disconnected while sending the body")
        chunk: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)
        message = await receive()
