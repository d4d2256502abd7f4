"""Request limits: the 413 body-size middleware and the client-disconnect watcher.

Pure ASGI rather than BaseHTTPMiddleware: it streams, and it keeps context variables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servekit.errors import ClientDisconnected
from servekit.server.encoding import dumps

T = TypeVar("T")


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
                # The server frames the body by its Content-Length (one byte more would
                # be the next request), so it cannot outgrow the limit: nothing to count.
                await self.app(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = dumps({"error": f"request body is over the limit of {self.max_bytes} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# How long a request waits for its result before anyone watches for its client leaving.
# Most answers come sooner, and then no watcher is ever made (a task, a receive() and a
# cancellation per request: measurable on small models). A client that leaves earlier is
# noticed at this point all the same, while its request is still queued.
WATCH_AFTER_S = 0.01


async def unless_disconnected(request: Request, pending: Coroutine[Any, Any, T]) -> T:
    """Await ``pending`` (a queued request) unless the client goes away first.

    The body has been read, so the next ASGI message is ``http.disconnect``. If the
    result is not there within ``WATCH_AFTER_S``, a watcher task waits for that message;
    if it comes first, this task is cancelled, which cancels the queued request (the
    batcher drops it before compute), and the caller gets ``ClientDisconnected``.
    ``pending`` runs in this task, not a task of its own: one task per request fewer on
    a path where tasks are a measurable share of the CPU.
    """
    task = asyncio.current_task()
    assert task is not None
    finished = gone = False
    watcher: asyncio.Future[None] | None = None

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    def on_watcher_done(done: asyncio.Future[None]) -> None:
        nonlocal gone
        if done.cancelled() or finished:
            return
        done.exception()  # retrieved: a receive() that failed counts as gone too
        gone = True
        task.cancel()

    def watch() -> None:
        nonlocal watcher
        if not finished:
            watcher = asyncio.ensure_future(disconnected())
            watcher.add_done_callback(on_watcher_done)

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch)
    try:
        return await pending
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientDisconnected("the client disconnected before the result was ready") from None
    finally:
        finished = True
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
