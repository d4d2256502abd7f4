"""What every gRPC method shares: access control (API keys, the admin token, the
in-flight limit), the request deadline, error translation, and metrics."""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

import grpc

from servekit.config import ServerSettings
from servekit.errors import Forbidden, Overloaded, ServekitError, Unauthorized
from servekit.grpc.status import status_for
from servekit.metrics import Metrics

log = logging.getLogger(__name__)

# Who may call a method: anyone (liveness, readiness), API-key holders (models), or the
# admin token's holder (the repository API).
Access = Literal["open", "model", "admin"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Guard:
    """The HTTP edge's access rules, for gRPC call metadata."""

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self.api_keys = [k.get_secret_value().encode() for k in settings.api_keys]
        self.admin_token = (
            settings.admin_token.get_secret_value().encode() if settings.admin_token else None
        )
        self.max_inflight = settings.max_inflight_requests
        self.inflight = 0
        self.metrics = metrics

    def check(self, context: grpc.aio.ServicerContext, access: Access) -> None:
        if access == "open":
            return
        given = _presented_key(context)
        if access == "admin":
            if self.admin_token is None:
                raise Forbidden(
                    "the management API is disabled: set SERVEKIT_ADMIN_TOKEN to enable it"
                )
            if given is None:
                raise Unauthorized("missing admin token: send 'authorization: Bearer <token>'")
            if not hmac.compare_digest(given, self.admin_token):
                raise Forbidden("invalid admin token")
            return
        if not self.api_keys:
            return
        if given is None:
            raise Unauthorized(
                "missing API key: send metadata 'authorization: Bearer <key>' or 'x-api-key'"
            )
        ok = False
        for key in self.api_keys:  # no early exit: same work whichever key matches
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise Forbidden("invalid API key")


def _presented_key(context: grpc.aio.ServicerContext) -> bytes | None:
    metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
    auth = metadata.get("authorization")
    if isinstance(auth, str):
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip().encode()
    key = metadata.get("x-api-key")
    return key.encode() if isinstance(key, str) else None


def remaining_s(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds left of the call's deadline (None: the client set none)."""
    left = context.time_remaining()
    return None if left is None else max(float(left), 0.0)


async def _abort(context: grpc.aio.ServicerContext, exc: ServekitError) -> None:
    await context.abort(status_for(exc), str(exc))


def unary(
    method: str, access: Access
) -> Callable[
    [Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]],
    Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
]:
    """A servicer's unary method (``self`` has a ``guard``), with access control, its
    errors as status codes, and metrics."""

    def wrap(
        fn: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
    ) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
        @functools.wraps(fn)
        async def call(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            guard: Guard = self.guard
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            admitted = False
            try:
                guard.check(context, access)
                if access == "model" and guard.max_inflight:
                    if guard.inflight >= guard.max_inflight:
                        raise Overloaded(
                            f"{guard.inflight} model requests in flight (the limit); retry later"
                        )
                    guard.inflight += 1
                    admitted = True
                return await fn(self, request, context)
            except asyncio.CancelledError:  # the client went away (or the server stops)
                code = grpc.StatusCode.CANCELLED
                raise
            except ServekitError as e:
                code = status_for(e)
                await _abort(context, e)
                raise  # not reached: abort raises
            except Exception as e:
                if isinstance(e, grpc.aio.AbortError):
                    raise
                code = grpc.StatusCode.INTERNAL
                log.exception("gRPC %s failed", method)
                await context.abort(code, f"internal error ({type(e).__name__}); see the log")
                raise
            finally:
                if admitted:
                    guard.inflight -= 1
                guard.metrics.grpc_requests.labels(method, code.name).inc()
                guard.metrics.grpc_seconds.labels(method).observe(time.perf_counter() - start)

        return call

    return wrap


async def guarded_stream(
    guard: Guard,
    context: grpc.aio.ServicerContext,
    method: str,
    responses: AsyncIterator[Resp],
) -> AsyncIterator[Resp]:
    """A streaming method's responses, after the same access check (model access)."""
    start = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        guard.check(context, "model")
        async for response in responses:
            yield response
    except ServekitError as e:
        code = status_for(e)
        await _abort(context, e)
    finally:
        guard.metrics.grpc_requests.labels(method, code.name).inc()
        guard.metrics.grpc_seconds.labels(method).observe(time.perf_counter() - start)
