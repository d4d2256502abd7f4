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
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(send)
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


async def unless_disconnected(request: Request, pending: Coroutine[Any, Any, T]) -> T:
    """Await ``pending`` (a queued request) unless the client goes away first.

    The body has been read, so the next ASGI message is ``http.disconnect``. A watcher
    task waits for it; if it comes first, this task is cancelled, which cancels the
    queued request (the batcher drops it before compute), and the caller gets
    ``ClientDisconnected``. ``pending`` runs in this task, not a task of its own: one
    task per request fewer on a path where tasks are a measurable share of the CPU.
    """
    task = asyncio.current_task()
    assert task is not None
    finished = gone = False

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    def on_watcher_done(watcher: asyncio.Future[None]) -> None:
        nonlocal gone
        if watcher.cancelled() or finished:
            return
        watcher.exception()  # retrieved: a receive() that failed counts as gone too
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(disconnected())
    watcher.add_done_callback(on_watcher_done)
    try:
        return await pending
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientDisconnected("the client disconnected before the result was ready") from None
    finally:
        finished = True
        watcher.cancel()
