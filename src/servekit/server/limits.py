"""Request limits: the 413 body-size middleware, and a client's disconnect as the data
plane's cancellation signal.

Pure ASGI rather than BaseHTTPMiddleware: it streams, and it keeps context variables.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servekit.dataplane import Cancelled
from servekit.errors import PayloadTooLarge
from servekit.server.encoding import dumps


class BodyTooLarge(PayloadTooLarge):
    """A body without a Content-Length grew past the limit while it was read. Any
    handler that meets it answers 413 (the error table); ``BodySizeLimit`` answers it
    if nothing else has."""


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
                    raise BodyTooLarge(self._message())
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

    def _message(self) -> str:
        return f"request body is over the limit of {self.max_bytes} bytes"

    async def _refuse(self, send: Send) -> None:
        body = dumps({"error": self._message()})
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


def client_gone(receive: Receive) -> Cancelled:
    """The data plane's cancellation signal for an HTTP request whose body has been
    read: the next ASGI message is then ``http.disconnect``, and the signal returns
    when it comes (or when receiving fails). The data plane awaits it only for a
    request still waiting after ``dataplane.WATCH_AFTER_S``."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return gone
