"""A direct path to the inference endpoints, past FastAPI's per-request machinery.

For every request FastAPI walks its routes, builds an exit stack, solves the endpoint's
dependencies and wraps it in exception handling: on a small model that is about 40% of
the CPU of a predict request (py-spy, see ``benchmarks/``). The predict and infer
endpoints take only the request and path parameters and return a ``Response``, so
none of that does anything for them. This middleware matches their POSTs with the
routes' own regexes and convertors and awaits the endpoints directly; exceptions go to
the app's own handlers, exactly as FastAPI would send them. The routes stay registered
for everything else (OpenAPI, HTTP metric labels, other methods).

A route qualifies only if its endpoint needs nothing FastAPI provides: no dependencies,
no query, header, cookie or body parameters, no body size limit of its own. Anything
else, now or after a change, is left to FastAPI.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

# The inference endpoints (operation ids in v1.py and v2.py).
OPERATIONS = ("v1_predict", "v1_predict_version", "v2_infer", "v2_infer_version")

Handler = Callable[[Request, Any], Response | Awaitable[Response]]


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


class DirectInference:
    """ASGI middleware: POSTs to the inference routes go straight to their endpoints."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self._targets: list[_Target] | None = None  # resolved at the first request
        self._by_class: dict[type[BaseException], Handler] = {}
        self._by_status: dict[int, Handler] = {}

    def _resolve(self) -> list[_Target]:
        targets = [t for r in _api_routes(self.fastapi_app.routes) if (t := _target(r))]
        if len(targets) != len(OPERATIONS):
            log.warning(
                "direct inference path: %d of %d routes qualify; the others go through FastAPI",
                len(targets),
                len(OPERATIONS),
            )
        for key, handler in self.fastapi_app.exception_handlers.items():
            if key in (500, Exception):  # the outermost middleware's, as in Starlette
                continue
            if isinstance(key, int):
                self._by_status[key] = handler
            else:
                self._by_class[key] = handler
        return targets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            if self._targets is None:
                self._targets = self._resolve()
            path = _route_path(scope)
            for target in self._targets:
                match = target.regex.match(path)
                if match is not None:
                    await self._call(target, match, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _call(
        self, target: _Target, match: re.Match[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        params = {k: target.convertors[k].convert(v) for k, v in match.groupdict().items()}
        scope["path_params"] = params
        scope["endpoint"] = target.endpoint
        scope["route"] = target.route
        request = Request(scope, receive, send)
        try:
            response = await target.endpoint(request, **params)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            result = handler(request, exc)  # servekit's are async; a sync one runs inline
            response = await result if inspect.isawaitable(result) else result
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Handler | None:
        """The handler Starlette's ExceptionMiddleware would pick."""
        if isinstance(exc, HTTPException) and exc.status_code in self._by_status:
            return self._by_status[exc.status_code]
        return next((self._by_class[c] for c in type(exc).__mro__ if c in self._by_class), None)


def _route_path(scope: Scope) -> str:
    """The path routes match: without the app's root path (as Starlette's router)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path
