"""A direct path to the inference endpoints, past FastAPI's per-request machinery.

For every request FastAPI runs its outer layers (server errors, telemetry, its body
limit), walks its routes, builds an exit stack, solves the endpoint's dependencies and
wraps it in exception handling. On a small model that was over half the CPU of a predict
request (py-spy, see ``docs/architecture.md``). The predict and infer endpoints take
only the request and path parameters and return a ``Response``, so none of it does
anything for them. Two pieces skip it:

- ``ServekitAPI`` (the app class) sends a POST that matches an inference route straight
  to the app's own middleware (metrics, CORS, API keys, body size: the same instances
  every request goes through), past FastAPI's outer layers, and answers an unexpected
  exception with the app's 500 handler as ``ServerErrorMiddleware`` would.
- ``DirectInference``, the innermost middleware, awaits the matched endpoint directly;
  its exceptions go to the app's own handlers, exactly as FastAPI would send them.

Routes are matched with their own regexes and convertors. They stay registered for
everything else (OpenAPI, HTTP metric labels, other methods). A route qualifies only if
its endpoint needs nothing FastAPI provides: no dependencies, no query, header, cookie
or body parameters, no body size limit of its own. Anything else, now or after a
change, is left to FastAPI, and so is every request while FastAPI's native telemetry is
on (whether it is, FastAPI asks OpenTelemetry on every request; here the answer is
re-read once a second).
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# The inference endpoints (operation ids in v1.py and v2.py).
OPERATIONS = ("v1_predict", "v1_predict_version", "v2_infer", "v2_infer_version")

Handler = Callable[[Request, Any], Response | Awaitable[Response]]

# Scope key: the route ``ServekitAPI`` matched, so ``DirectInference`` need not match again.
MATCHED = "servekit.direct_target"

# Whether FastAPI's native telemetry is on depends on OpenTelemetry's global providers,
# which it looks up on each request (three environment reads, ~3.6 us here: 3-4% of a
# small predict request). They are set at start-up in practice; one set later still
# applies within this many seconds.
TELEMETRY_RECHECK_S = 1.0
_clock = time.monotonic
# Where FastAPI's native telemetry puts the request it is recording.
TELEMETRY_SCOPE_KEY = "fastapi.telemetry"


@dataclass(frozen=True, slots=True)
class _Target:
    regex: re.Pattern[str]
    convertors: Mapping[str, Any]
    endpoint: Callable[..., Awaitable[Response]]
    route: Any


def _api_routes(routes: list[Any]) -> Iterator[Any]:
    """Every API route with its effective (included) regex, on any FastAPI version."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            yield from contexts()
        elif isinstance(route, APIRoute):
            yield route


def _target(route: Any) -> _Target | None:
    original = getattr(route, "original_route", route)
    dependant = getattr(route, "dependant", None)
    if (
        getattr(original, "operation_id", None) not in OPERATIONS
        or getattr(route, "methods", None) != {"POST"}
        or dependant is None
        or dependant.dependencies
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.request_param_name is None
        or getattr(route, "dependencies", None)
        or getattr(route, "max_body_size", None) is not None
        or {p.name for p in dependant.path_params} != set(route.param_convertors)
    ):
        return None
    return _Target(route.path_regex, route.param_convertors, original.endpoint, original)


class _Targets:
    """The qualifying inference routes of an app and its exception handlers, resolved
    once at the first request (routes are all registered by then)."""

    def __init__(self, fastapi_app: FastAPI) -> None:
        self.targets = [t for r in _api_routes(fastapi_app.routes) if (t := _target(r))]
        if len(self.targets) != len(OPERATIONS):
            log.warning(
                "direct inference path: %d of %d routes qualify; the others go through FastAPI",
                len(self.targets),
                len(OPERATIONS),
            )
        self.by_class: dict[type[BaseException], Handler] = {}
        self.by_status: dict[int, Handler] = {}
        for key, handler in fastapi_app.exception_handlers.items():
            if key in (500, Exception):  # the outermost middleware's, as in Starlette
                continue
            if isinstance(key, int):
                self.by_status[key] = handler
            else:
                self.by_class[key] = handler

    def match(self, scope: Scope) -> tuple[_Target, re.Match[str]] | None:
        path = _route_path(scope)
        for target in self.targets:
            match = target.regex.match(path)
            if match is not None:
                return target, match
        return None

    def handler(self, exc: Exception) -> Handler | None:
        """The handler Starlette's ExceptionMiddleware would pick."""
        if isinstance(exc, HTTPException) and exc.status_code in self.by_status:
            return self.by_status[exc.status_code]
        return next((self.by_class[c] for c in type(exc).__mro__ if c in self.by_class), None)


class ServekitAPI(FastAPI):
    """FastAPI whose inference POSTs skip its outer layers (see the module docstring)."""

    _targets: _Targets | None = None
    _user_stack: ASGIApp | None = None  # the outermost of the app's own middleware
    _telemetry_enabled = False
    _telemetry_checked_at = -float("inf")

    def build_middleware_stack(self) -> ASGIApp:
        # A marker outside every user middleware records where that chain starts.
        self.user_middleware.insert(0, Middleware(_UserStackEntry, owner=self))
        try:
            return super().build_middleware_stack()
        finally:
            del self.user_middleware[0]

    def direct_targets(self) -> _Targets:
        if self._targets is None:
            self._targets = _Targets(self)
        return self._targets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            if self.middleware_stack is None:
                self.middleware_stack = self.build_middleware_stack()
            found = self.direct_targets().match(scope)
            if found is not None and self._user_stack is not None and not self._telemetry_on():
                scope["app"] = self
                scope[MATCHED] = found
                await self._direct(self._user_stack, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _telemetry_on(self) -> bool:
        now = _clock()
        if now - self._telemetry_checked_at >= TELEMETRY_RECHECK_S:
            native = getattr(self, "_native_telemetry", None)  # FastAPI >= 0.160
            self._telemetry_enabled = native is not None and bool(native.enabled())
            self._telemetry_checked_at = now
        return self._telemetry_enabled

    async def _direct(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """``app`` with ServerErrorMiddleware's contract: an exception nothing handled
        gets the app's 500 handler's answer (if nothing was sent yet), then is re-raised
        for the server to log."""
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await app(scope, receive, tracking_send)
        except Exception as exc:
            handler = self.exception_handlers.get(500) or self.exception_handlers.get(Exception)
            if not started and handler is not None:
                result = handler(Request(scope), exc)
                response = await result if inspect.isawaitable(result) else result
                await response(scope, receive, send)
            raise


class _UserStackEntry:
    """Marks the start of the app's own middleware chain for ``ServekitAPI``."""

    def __init__(self, app: ASGIApp, owner: ServekitAPI) -> None:
        self.app = app
        owner._user_stack = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class DirectInference:
    """ASGI middleware: POSTs to the inference routes go straight to their endpoints."""

    def __init__(self, app: ASGIApp, fastapi_app: ServekitAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            targets = self.fastapi_app.direct_targets()
            found = scope.pop(MATCHED, None)
            # A request FastAPI's native telemetry records (it sets this scope key, this
            # app's or an outer app's) is left to FastAPI's router: its endpoint spans.
            if found is None and scope.get(TELEMETRY_SCOPE_KEY) is None:
                found = targets.match(scope)
            if found is not None:
                target, match = found
                await self._call(targets, target, match, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _call(
        self,
        targets: _Targets,
        target: _Target,
        match: re.Match[str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        params = {k: target.convertors[k].convert(v) for k, v in match.groupdict().items()}
        scope["path_params"] = params
        scope["endpoint"] = target.endpoint
        scope["route"] = target.route
        request = Request(scope, receive, send)
        try:
            response = await target.endpoint(request, **params)
        except Exception as exc:
            handler = targets.handler(exc)
            if handler is None:
                raise
            result = handler(request, exc)  # servekit's are async; a sync one runs inline
            response = await result if inspect.isawaitable(result) else result
        await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path routes match: without the app's root path (as Starlette's router)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path
