"""The HTTP/1.1 connection layer under the app: uvicorn's protocols with servekit's
bounds on the request head and its manners at shutdown.

uvicorn bounds neither the request line nor the header section with httptools (llhttp
has no limit, and httptools buffers each header until it is whole), so one connection
could send hundreds of MiB of headers. ``HttpToolsLimited`` counts the head as it
arrives and answers 414 (request target) or 431 (header section) as soon as a limit
is passed, before reading further. With h11, uvicorn's public
``h11_max_incomplete_event_size`` bounds the head and ``H11Limited`` answers 431 for
it; the request-target and header-count limits are then checked by the app's edge
(``head_refusal``), which sees every request whatever the parser.

At shutdown, uvicorn closes idle keep-alive connections at once, so a request already
on its way on one is reset without an answer. Here such a connection stays open for a
moment (``DRAIN_GRACE_S``) and answers a request with 503 and ``Connection: close``: a
client can tell "refused" from "lost".

Hooks used on uvicorn's protocol classes, none private: the parser callbacks of
httptools (``on_message_begin``, ``on_url``, ``on_header``, ``on_headers_complete``),
asyncio's ``Protocol`` methods, uvicorn's ``shutdown()`` (what its server calls on
every connection), ``send_400_response`` and ``on_response_complete``. If a future
uvicorn stops calling the last two, the bounds still hold (a refused head stops the
parser), the answer is uvicorn's own 400, and shutdown is uvicorn's own.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from starlette.types import Scope

from servekit.config import ServerSettings

# Bytes a legitimate head may hold beyond the URL and the header section (method,
# version, separators, whitespace).
HEAD_SLACK = 1024
# After refusing a head, read and drop what the client still sends, for this long or
# this many bytes, so the answer is not lost to a reset of the connection (closing with
# unread data sends RST).
LINGER_S = 2.0
LINGER_BYTES = 8 * 1024 * 1024
# At shutdown, how long an idle keep-alive connection stays open to answer 503 to a
# request that was already on its way (at most the drain timeout).
DRAIN_GRACE_S = 1.0

# The scope extension that marks a request to refuse, with the message to answer.
REFUSED = "servekit.refused"
SHUTTING_DOWN = "server shutting down"

Parser = Literal["auto", "httptools", "h11"]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The request-head limits and the drain timeout of one server."""

    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    drain_timeout_s: float = 30.0
    header_timeout_s: float = 30.0
    idle_timeout_s: float = 75.0  # a new connection that sends nothing

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> HttpLimits:
        return cls(
            max_url_bytes=settings.max_url_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_header_count=settings.max_header_count,
            drain_timeout_s=settings.drain_timeout_s,
            header_timeout_s=settings.header_timeout_s,
            idle_timeout_s=settings.timeout_keep_alive_s,
        )

    @property
    def max_head_bytes(self) -> int:
        """The whole head (request line and header section) at most, in raw bytes."""
        return self.max_url_bytes + self.max_header_bytes + HEAD_SLACK

    def url_too_long(self) -> str:
        return f"request target longer than {self.max_url_bytes} bytes"

    def headers_too_large(self) -> str:
        return f"request header section larger than {self.max_header_bytes} bytes"

    def too_many_headers(self) -> str:
        return f"more than {self.max_header_count} request header fields"

    def head_too_slow(self) -> str:
        return f"request head not complete {self.header_timeout_s:g} s after it began"


def head_refusal(scope: Scope, limits: HttpLimits) -> tuple[int, str] | None:
    """The edge's check of a request's head (status, message), whatever the parser."""
    if len(scope["headers"]) > limits.max_header_count:
        return 431, limits.too_many_headers()
    if len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) > (
        limits.max_url_bytes
    ):
        return 414, limits.url_too_long()
    return None


def refusal_bytes(status: int, message: str, extra: tuple[bytes, ...] = ()) -> bytes:
    """A complete HTTP/1.1 response `{"error": message}` that closes the connection."""
    reasons = {
        414: b"URI Too Long",
        431: b"Request Header Fields Too Large",
        408: b"Request Timeout",
        503: b"Service Unavailable",
    }
    body = json.dumps({"error": message}).encode()
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, reasons[status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            *extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class _Refused(Exception):
    """Raised in a parser callback to stop the parser after a refusal was written."""


class _Refusals:
    """What both protocol classes share: write a refusal, then linger and close."""

    transport_: asyncio.Transport | None = None
    refused = False
    dropped = 0  # bytes read and dropped since the refusal

    def drop(self, data: bytes) -> None:
        """Data after a refusal: dropped, until the linger has taken enough."""
        self.dropped += len(data)
        if self.dropped > LINGER_BYTES and self.transport_ is not None:
            self.transport_.close()

    def refuse(self, response: bytes, linger_s: float = LINGER_S) -> None:
        transport = self.transport_
        self.refused = True
        if transport is None or transport.is_closing():
            return
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()  # the client reads the answer and EOF, then closes
            asyncio.get_running_loop().call_later(linger_s, transport.close)
        else:  # TLS: no half-close
            transport.close()


def _http_tools_base() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return HttpToolsProtocol


def _h11_base() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol


try:
    _HttpToolsBase: Any = _http_tools_base()
except ImportError:  # httptools not installed: uvicorn runs h11
    _HttpToolsBase = None


class HttpToolsLimited(_Refusals, _HttpToolsBase or asyncio.Protocol):  # type: ignore[misc]
    """uvicorn's httptools protocol with bounded heads and a drain that answers."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.head_open = False  # between a message's first byte and its header end
        self.head_raw = 0  # bytes received while the head was open (after its first chunk)
        self.url_bytes = 0
        self.header_bytes = 0
        self.header_count = 0
        self.pending = 0  # requests begun on this connection and not answered yet
        self.refuse_new = False  # shutdown began while idle: answer new requests 503
        # uvicorn times a connection out only between requests: a new connection that
        # sends nothing, or a head that trickles in, would hold it for ever.
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport_ = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        super().connection_made(transport)
        self._time(self.limits.idle_timeout_s, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._time(None)
        super().connection_lost(exc)

    def _time(self, seconds: float | None, then: Callable[[], object] | None = None) -> None:
        """(Re)arm the connection's one timer; ``None`` disarms it."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if seconds is not None and then is not None:
            self.timer = asyncio.get_running_loop().call_later(seconds, then)

    def _head_timed_out(self) -> None:
        self.timer = None
        if self.head_open and not self.refused:
            self._refuse_head(408, self.limits.head_too_slow())

    def data_received(self, data: bytes) -> None:
        if self.refused:
            self.drop(data)
            return
        if self.head_open:
            self.head_raw += len(data)
            if self.head_raw > self.limits.max_head_bytes:
                self._refuse_head(431, self.limits.headers_too_large())
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if not self.refused:  # a refusal of ours stopped the parser: answered already
            super().send_400_response(msg)

    # -- httptools parser callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.refuse_new and not self.pending:
            # A new request after the stop began. The app's edge answers it 503 and
            # Connection: close through uvicorn (access log, metrics), as marked here
            # in its scope (uvicorn's, made by on_message_begin).
            scope = getattr(self, "scope", None)
            if not isinstance(scope, dict):  # a uvicorn without it: answered here
                extra = (b"retry-after: 1\r\n",)
                self.refuse(refusal_bytes(503, SHUTTING_DOWN, extra))
                raise _Refused(SHUTTING_DOWN)
            scope["extensions"] = {**scope.get("extensions", {}), REFUSED: SHUTTING_DOWN}
        self.pending += 1
        self.head_open = True
        self._time(self.limits.header_timeout_s, self._head_timed_out)
        self.head_raw = self.url_bytes = self.header_bytes = self.header_count = 0

    def on_url(self, url: bytes) -> None:
        self.url_bytes += len(url)
        if self.url_bytes > self.limits.max_url_bytes:
            raise self._refuse_head(414, self.limits.url_too_long())
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        self.header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self.header_count > self.limits.max_header_count:
            raise self._refuse_head(431, self.limits.too_many_headers())
        if self.header_bytes > self.limits.max_header_bytes:
            raise self._refuse_head(431, self.limits.headers_too_large())
        super().on_header(name, value)

    def _refuse_head(self, status: int, message: str) -> _Refused:
        """Answer a head over a limit; the exception raised stops the parser."""
        if self.pending > 1 and self.transport_ is not None:
            # A pipelined request: the answer to the one before it is still being
            # written, so there is no room for this one's. Close instead.
            self.refused = True
            self.transport_.close()
        else:
            self.refuse(refusal_bytes(status, message))
        return _Refused(message)

    def on_headers_complete(self) -> None:
        self.head_open = False
        self._time(None)
        super().on_headers_complete()

    # -- uvicorn's hooks ----------------------------------------------------------------

    def on_response_complete(self) -> None:
        self.pending -= 1
        super().on_response_complete()

    def shutdown(self) -> None:
        transport = self.transport_
        arriving = self.pending == 1 and self.head_open  # only a request still arriving
        scope = getattr(self, "scope", None)
        if arriving and isinstance(scope, dict):
            # Its answer: 503 and Connection: close, as for a request after this point
            # (uvicorn would close the connection under it).
            scope["extensions"] = {**scope.get("extensions", {}), REFUSED: SHUTTING_DOWN}
            self.refuse_new = True
            return
        if self.pending or transport is None or transport.is_closing():
            super().shutdown()  # uvicorn: the response in progress says Connection: close
            return
        self.refuse_new = True
        grace = min(DRAIN_GRACE_S, self.limits.drain_timeout_s)
        asyncio.get_running_loop().call_later(grace, self._close_if_idle)

    def _close_if_idle(self) -> None:
        transport = self.transport_
        if (
            transport is not None
            and not (self.refused or self.pending)
            and not transport.is_closing()
        ):
            transport.close()


try:
    _H11Base: Any = _h11_base()
except ImportError:  # pragma: no cover - h11 is a dependency of uvicorn
    _H11Base = asyncio.Protocol


class H11Limited(_Refusals, _H11Base):  # type: ignore[misc]
    """uvicorn's h11 protocol, answering 431 when the head outgrows its bound.

    h11 itself refuses a head over ``h11_max_incomplete_event_size`` (set to the same
    bound), which uvicorn answers with a plain 400; the check here comes first and
    answers 431 ``{"error"}``. It reads h11's public ``trailing_data`` and
    ``their_state`` through uvicorn's ``conn``; without it, h11's own bound answers.
    """

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport_ = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            self.drop(data)
            return
        if self._buffered_head() + len(data) > self.limits.max_head_bytes:
            self.refuse(refusal_bytes(431, self.limits.headers_too_large()))
            return
        super().data_received(data)

    def _buffered_head(self) -> int:
        """Bytes h11 holds of a request head not yet complete (0 if not in a head)."""
        import h11

        conn = getattr(self, "conn", None)
        if not isinstance(conn, h11.Connection) or conn.their_state is not h11.IDLE:
            return 0
        return len(conn.trailing_data[0])


def protocol_class(parser: Parser = "auto") -> type[HttpToolsLimited | H11Limited]:
    """The protocol class for ``parser``: httptools when installed (as uvicorn's auto)."""
    if parser == "h11" or (parser == "auto" and _HttpToolsBase is None):
        return H11Limited
    if _HttpToolsBase is None:
        raise RuntimeError("httptools is not installed")
    return HttpToolsLimited


def uvicorn_options(settings: ServerSettings, parser: Parser = "auto") -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.Config`` that this module sets.

    The protocol is a ``functools.partial`` of a module-level class, so it pickles to
    uvicorn's worker processes; uvicorn calls it as it calls a protocol class.
    """
    limits = HttpLimits.from_settings(settings)
    return {
        "http": functools.partial(protocol_class(parser), limits=limits),
        "h11_max_incomplete_event_size": limits.max_head_bytes,
        "timeout_keep_alive": settings.timeout_keep_alive_s,
        # uvicorn types it int; asyncio.timeout takes the float as given (0.5 s stays).
        "timeout_graceful_shutdown": settings.drain_timeout_s,
    }
