"""A direct path to the inference endpoints, past FastAPI's per-request machinery.

The predict and infer endpoints take only the request and path strings and return a
``Response``, so FastAPI's routing, dependency solving and exit stacks do nothing for
them, yet cost a large share of a small request's CPU (``docs/architecture.md``). Two
pieces skip them:

- ``ServekitAPI`` (the app class) sends a POST that matches an inference route straight
  to the app's own middleware (the same instances every request goes through), past
  FastAPI's outer layers, and answers an exception nothing handled with the app's 500
  handler, as ``ServerErrorMiddleware`` would.
- ``DirectInference``, the innermost middleware, awaits the matched endpoint; its
  exceptions go to the app's own handlers, as FastAPI would send them.

This reads FastAPI and Starlette internals (routes' regexes, convertors and dependants,
where the user middleware starts, the native-telemetry switch), so it fails safe: they
are checked once, when the middleware stack is built, and if one is missing or not as
expected, or reading them fails later, the app logs one warning and serves every
request through FastAPI's router from then on (``ServekitAPI.direct_path_active``).
Requests FastAPI's native telemetry records go through FastAPI too (its spans).
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fastapi
import starlette
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

# FastAPI asks OpenTelemetry on every request whether its native telemetry is on (a few
# environment reads); providers are set at start-up in practice, so the answer is kept
# this long (one set later still applies within it).
TELEMETRY_RECHECK_S = 1.0
_clock = time.monotonic
# Where FastAPI's native telemetry puts the request it is recording.
TELEMETRY_SCOPE_KEY = "fastapi.telemetry"
# FastAPI's native-telemetry object (FastAPI >= 0.160; private, hence checked).
NATIVE_TELEMETRY_ATTR = "_native_telemetry"

# What a route's dependant lists; a qualifying route needs none but its path parameters.
_NEEDS = ("dependencies", "query_params", "header_params", "cookie_params", "body_params")


class InternalsChanged(Exception):
    """FastAPI or Starlette is not as the direct path reads it, or a route needs more."""


@dataclass(frozen=True, slots=True)
class _Target:
    regex: re.Pattern[str]
    convertors: Mapping[str, Any]
    endpoint: Callable[..., Awaitable[Response]]
    route: Any


@dataclass(frozen=True, slots=True)
class _Targets:
    """Everything the direct path uses of FastAPI and Starlette, read once."""

    targets: tuple[_Target, ...]
    by_class: Mapping[type[BaseException], Handler]
    by_status: Mapping[int, Handler]
    server_error: Handler | None  # the 500 / Exception handler
    telemetry_enabled: Callable[[], object] | None  # None: this FastAPI has none

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


def _takes(function: Callable[..., Any], parameter: str) -> bool:
    """Whether FastAPI has a feature: its public constructor takes the parameter."""
    return parameter in inspect.signature(function).parameters


def _api_routes(routes: list[Any]) -> Iterator[Any]:
    """Every API route with its effective (included) regex, on any FastAPI version."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            yield from contexts()
        elif isinstance(route, APIRoute):
            yield route


def _target(route: Any, original: Any) -> _Target:
    """How to call an inference route directly; InternalsChanged if the route is not as
    expected or its endpoint needs something FastAPI provides."""
    regex = route.path_regex
    if not isinstance(regex, re.Pattern):
        raise InternalsChanged(f"path_regex is {type(regex).__name__}, not a compiled regex")
    convertors = route.param_convertors
    if not isinstance(convertors, Mapping) or not all(
        callable(getattr(c, "convert", None)) for c in convertors.values()
    ):
        raise InternalsChanged("param_convertors is not a mapping of convertors")
    if set(regex.groupindex) != set(convertors):
        raise InternalsChanged("path_regex's groups are not param_convertors' names")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        raise InternalsChanged("no dependant")
    lists: dict[str, Any] = {n: getattr(dependant, n, None) for n in (*_NEEDS, "path_params")}
    if odd := [name for name, value in lists.items() if not isinstance(value, list | tuple)]:
        raise InternalsChanged(f"dependant has no list {', '.join(odd)}")
    request_param = dependant.request_param_name  # the endpoint's Request parameter
    if {p.name for p in lists["path_params"]} != set(convertors):
        raise InternalsChanged("dependant.path_params are not the path's parameters")
    needs = [f"dependant.{name}" for name in _NEEDS if lists[name]]
    if route.methods != {"POST"}:
        needs.append(f"methods {', '.join(sorted(route.methods))}")
    if route.dependencies:
        needs.append("route dependencies")
    if _takes(APIRoute.__init__, "max_body_size") and route.max_body_size is not None:
        needs.append("a max_body_size")
    endpoint = original.endpoint
    if not inspect.iscoroutinefunction(endpoint):
        needs.append("a sync endpoint")
    elif request_param is None or next(iter(inspect.signature(endpoint).parameters)) != (
        request_param
    ):
        needs.append("no leading Request parameter")  # the endpoint is called so here
    if needs:
        raise InternalsChanged(f"needs FastAPI for {', '.join(needs)}")
    return _Target(regex, convertors, endpoint, original)


def _check(app: ServekitAPI) -> _Targets:
    """Read and check what the direct path uses; InternalsChanged (or whatever reading
    raised) says what is missing or different."""
    problems: list[str] = []
    if app._user_stack is None:
        problems.append("build_middleware_stack did not install the user-middleware marker")
    if not app._inner_installed:
        problems.append("DirectInference is not among the app's middleware")
    if app.root_path:
        problems.append("the app has a root_path")
    if _takes(FastAPI.__init__, "max_body_size") and app.max_body_size is not None:
        problems.append("the app has a body size limit (max_body_size)")

    found: dict[str, _Target | None] = {}  # None: the route is there but unusable
    unusable: dict[str, list[str]] = {}  # why: the operations
    for route in _api_routes(app.routes):
        original = getattr(route, "original_route", route)
        operation = getattr(original, "operation_id", None)
        if operation not in OPERATIONS:
            continue
        if operation in found:
            unusable.setdefault("registered twice", []).append(operation)
            continue
        found[operation] = None
        try:
            found[operation] = _target(route, original)
        except Exception as exc:  # AttributeError, TypeError, ...: a changed route
            unusable.setdefault(_describe(exc), []).append(operation)
    problems += [f"routes {', '.join(ops)}: {why}" for why, ops in unusable.items()]
    if missing := [op for op in OPERATIONS if op not in found]:
        problems.append(f"no route for {', '.join(missing)}")

    handlers = app.exception_handlers
    if not isinstance(handlers, Mapping):
        raise InternalsChanged("exception_handlers is not a mapping")
    by_class: dict[type[BaseException], Handler] = {}
    by_status: dict[int, Handler] = {}
    server_error = None
    for key, handler in handlers.items():
        if not callable(handler):
            problems.append(f"exception handler for {key!r} is not callable")
        elif key in (500, Exception):  # the outermost middleware's, as in Starlette
            server_error = handler
        elif isinstance(key, int):
            by_status[key] = handler
        elif isinstance(key, type) and issubclass(key, BaseException):
            by_class[key] = handler
        else:
            problems.append(f"exception handler key {key!r}")

    # No native telemetry is "off" only on a FastAPI without it; one with it (it takes
    # telemetry=) but not where it is read here may be recording: leave it to FastAPI.
    native = getattr(app, NATIVE_TELEMETRY_ATTR, None)
    enabled = getattr(native, "enabled", None)
    if native is None and _takes(FastAPI.__init__, "telemetry"):
        problems.append(f"FastAPI takes telemetry= but the app has no {NATIVE_TELEMETRY_ATTR}")
    elif native is not None and not callable(enabled):
        problems.append(f"{NATIVE_TELEMETRY_ATTR}.enabled is not callable")

    targets = tuple(t for t in found.values() if t is not None)
    if problems or len(targets) != len(OPERATIONS):
        raise InternalsChanged("; ".join(problems))
    return _Targets(targets, by_class, by_status, server_error, enabled)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, InternalsChanged) else f"{type(exc).__name__}: {exc}"


class ServekitAPI(FastAPI):
    """FastAPI whose inference POSTs skip its outer layers (see the module docstring)."""

    _targets: _Targets | None = None  # None: not checked yet, or off
    _checked = False
    _warned = False
    _user_stack: ASGIApp | None = None  # the outermost of the app's own middleware
    _inner_installed = False  # DirectInference was built into the stack
    _telemetry_enabled = False
    _telemetry_checked_at = -float("inf")

    @property
    def direct_path_active(self) -> bool:
        """Whether inference POSTs take the direct path. Decided when the app starts (its
        middleware stack is built); False before that and, once switched off, for good."""
        return self._targets is not None

    def build_middleware_stack(self) -> ASGIApp:
        # A marker outside every user middleware records where that chain starts.
        try:
            self.user_middleware.insert(0, Middleware(_UserStackEntry, owner=self))
        except Exception:  # no marker: the check below switches the direct path off
            stack = super().build_middleware_stack()
        else:
            try:
                stack = super().build_middleware_stack()
            finally:
                del self.user_middleware[0]
        self._direct_targets()
        return stack

    def _direct_targets(self) -> _Targets | None:
        """The direct path's view of the app, checked once; None: off."""
        if not self._checked:
            self._checked = True
            try:
                self._targets = _check(self)
            except Exception as exc:
                self._switch_off(_describe(exc), exc)
        return self._targets

    def _switch_off(self, why: str, exc: BaseException) -> None:
        self._targets = None
        self._checked = True
        if not self._warned:
            self._warned = True
            log.warning(
                "direct inference path off (FastAPI %s, Starlette %s): %s; every request "
                "goes through FastAPI's router",
                fastapi.__version__,
                starlette.__version__,
                why,
            )
            log.debug("direct inference path off", exc_info=exc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            entry = self._entry(scope)
            if entry is not None:
                user_stack, server_error, found = entry
                scope["app"] = self
                scope[MATCHED] = found
                await _serve(user_stack, server_error, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _entry(
        self, scope: Scope
    ) -> tuple[ASGIApp, Handler | None, tuple[_Target, re.Match[str]]] | None:
        """Where a POST to an inference route goes directly (the user middleware, the
        500 handler, the route); None: FastAPI's normal route. Nothing here may fail a
        request: reading FastAPI wrong switches the direct path off."""
        if self._checked and self._targets is None:
            return None
        try:
            if not self._checked and self.middleware_stack is None:
                return None  # not started: FastAPI builds the stack, which runs the check
            targets = self._direct_targets()  # started without our build: report why
            if targets is None or self._user_stack is None:
                return None
            found = targets.match(scope)
            if found is None or self._telemetry_on(targets):
                return None
            return self._user_stack, targets.server_error, found
        except Exception as exc:
            self._switch_off(f"reading them failed at a request: {_describe(exc)}", exc)
            return None

    def _telemetry_on(self, targets: _Targets) -> bool:
        now = _clock()
        if now - self._telemetry_checked_at >= TELEMETRY_RECHECK_S:
            enabled = targets.telemetry_enabled
            self._telemetry_enabled = enabled is not None and bool(enabled())
            self._telemetry_checked_at = now
        return self._telemetry_enabled

    def _inner_call(self, scope: Scope) -> tuple[_Targets, _Target, dict[str, Any]] | None:
        """The endpoint a POST reaching ``DirectInference`` is sent to, with its path
        parameters; None: FastAPI's router (switched off if reading FastAPI failed)."""
        found = scope.pop(MATCHED, None)
        targets = self._targets
        if targets is None:
            return None
        try:
            # A request FastAPI's native telemetry records (it sets this scope key, this
            # app's or an outer app's) is left to FastAPI's router: its endpoint spans.
            if found is None and scope.get(TELEMETRY_SCOPE_KEY) is None:
                found = targets.match(scope)
            if found is None:
                return None
            target, match = found
            params = {k: target.convertors[k].convert(v) for k, v in match.groupdict().items()}
        except Exception as exc:
            self._switch_off(f"reading them failed at a request: {_describe(exc)}", exc)
            return None
        return targets, target, params


async def _serve(
    app: ASGIApp, server_error: Handler | None, scope: Scope, receive: Receive, send: Send
) -> None:
    """``app`` with ServerErrorMiddleware's contract: an exception nothing handled gets
    the app's 500 handler's answer (if nothing was sent yet), then is re-raised for the
    server to log."""
    started = False

    async def tracking_send(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except Exception as exc:
        if not started and server_error is not None:
            result = server_error(Request(scope), exc)
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
        fastapi_app._inner_installed = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            call = self.fastapi_app._inner_call(scope)
            if call is not None:
                await self._call(*call, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _call(
        self,
        targets: _Targets,
        target: _Target,
        params: dict[str, Any],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
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
