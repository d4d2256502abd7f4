"""The request head is bounded: a real server on 127.0.0.1, raw sockets, the parser
servekit runs (httptools) and h11 (issue 21, defect 1)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from conftest import ServerProcess
from servekit.config import ServerSettings
from servekit.server.httpserver import H11Limited, HttpLimits, HttpToolsLimited, protocol_class

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """The demo model with every limit at its default."""
    s = ServerProcess(name="http-limits").wait_ready()
    yield s
    assert s.stop() == 0, s.log()


# A server on uvicorn's h11 protocol (as when httptools is not installed), small limits.
H11_SERVER = """
import sys, uvicorn
from servekit.config import ServerSettings
from servekit.server.httpserver import uvicorn_options
settings = ServerSettings()
uvicorn.run("servekit.server.app:create_app_from_env", factory=True, port=int(sys.argv[-1]),
            log_level="info", **uvicorn_options(settings, parser="h11"))
"""


@pytest.fixture(scope="module")
def h11_server() -> Iterator[ServerProcess]:
    s = ServerProcess(
        env={
            "SERVEKIT_MAX_HEADER_BYTES": "4096",
            "SERVEKIT_MAX_HEADER_COUNT": "20",
            "SERVEKIT_MAX_URL_BYTES": "1024",
        },
        name="http-limits-h11",
        command=(sys.executable, "-c", H11_SERVER),
    ).wait_ready()
    yield s
    assert s.stop() in (0, -15), s.log()  # plain uvicorn.run re-raises the SIGTERM


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read from ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        return read_response(sock)


def get(path: bytes = b"/v2/health/ready", headers: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n"


def fields(n: int, size: int = 1) -> bytes:
    return b"".join(b"X-F%d: %s\r\n" % (i, b"v" * size) for i in range(n))


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the peak resident set
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("shape", ["many headers", "one header"])
def test_200_mib_of_headers_get_431_at_once_and_memory_stays_flat(
    server: ServerProcess, shape: str
) -> None:
    """The test round's attack: 200 MiB of headers on one connection got a 200 and took
    the server from 88 to 295 MiB. httptools buffers a header until it is whole, so one
    endless header is the harder case."""
    before = peak_rss_mib(server.proc.pid)
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port)) as sock:

        def flood() -> None:
            nonlocal sent
            line = b"X-Pad: " + b"a" * 1000 + b"\r\n" if shape == "many headers" else b"a" * 1024
            try:
                sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n")
                if shape == "one header":
                    sock.sendall(b"X-Huge: ")
                block = line * 64
                while sent < 200 * MiB:
                    sock.sendall(block)
                    sent += len(block)
            except OSError:
                pass  # the server closed the connection: what it should do

        sender = threading.Thread(target=flood, daemon=True)
        t0 = time.monotonic()
        sender.start()
        status, headers, body = read_response(sock)
        answered_s = time.monotonic() - t0
        sender.join(30)
    assert status == 431, body
    assert headers["connection"] == "close"
    assert "65536 bytes" in json.loads(body)["error"]
    assert answered_s < 5, answered_s
    assert sent < 50 * MiB, f"{sent / MiB:.0f} MiB went in before the connection closed"
    growth = peak_rss_mib(server.proc.pid) - before
    assert growth < 16, f"peak RSS grew {growth:.1f} MiB"
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_head_limits_at_their_defaults(server: ServerProcess) -> None:
    port = server.port
    # 100 header fields, ~60 KiB: fine. 101 fields, or 70 KiB: 431.
    assert exchange(port, get(headers=fields(99)))[0] == 200  # + Host = 100
    assert exchange(port, get(headers=fields(60, 1000)))[0] == 200
    status, headers, body = exchange(port, get(headers=fields(100)))
    assert (status, json.loads(body)) == (431, {"error": "more than 100 request header fields"})
    assert headers["content-type"] == "application/json"
    status, _, body = exchange(port, get(headers=fields(70, 1000)))
    assert status == 431 and "header section larger than 65536" in json.loads(body)["error"]
    # The request target: 8 KiB (path and query) is fine, one byte more is 414.
    ok = b"/v2/health/ready?" + b"q" * (8192 - len(b"/v2/health/ready?"))
    assert exchange(port, get(path=ok))[0] == 200
    status, headers, body = exchange(port, get(path=ok + b"q"))
    assert status == 414 and headers["connection"] == "close"
    assert json.loads(body) == {"error": "request target longer than 8192 bytes"}


def test_limits_count_each_request_of_a_keep_alive_connection(server: ServerProcess) -> None:
    """The counts start again with each request: three requests of 90 fields each on one
    connection are all served."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        for _ in range(3):
            sock.sendall(get(headers=fields(90, 500)))
            status, headers, _ = read_response(sock)
            assert status == 200 and headers.get("connection") != "close"


def test_a_refused_head_is_answered_after_a_keep_alive_request(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(get())
        assert read_response(sock)[0] == 200
        sock.sendall(get(path=b"/" + b"a" * 9000))
        assert read_response(sock)[0] == 414
        sock.settimeout(5)
        assert sock.recv(1) == b""  # and the connection is closed


def test_a_head_that_trickles_in_gets_408_and_a_silent_connection_is_closed() -> None:
    """uvicorn times out a connection only between requests: a head sent a byte at a
    time, or a connection that sends nothing, held it for ever."""
    s = ServerProcess(
        "--header-timeout", "1", "--timeout-keep-alive", "1", name="http-limits-slow"
    ).wait_ready()
    try:
        with socket.create_connection(("127.0.0.1", s.port)) as sock:
            t0 = time.monotonic()
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n")
            try:
                for _ in range(50):  # a byte every 0.1 s: never a whole head
                    sock.sendall(b"X")
                    time.sleep(0.1)
            except OSError:
                pass
            status, headers, body = read_response(sock)
            assert (status, headers["connection"]) == (408, "close"), body
            assert json.loads(body) == {"error": "request head not complete 1 s after it began"}
            assert time.monotonic() - t0 < 4
        with socket.create_connection(("127.0.0.1", s.port)) as sock:
            sock.settimeout(10)
            t0 = time.monotonic()
            assert sock.recv(1) == b""  # closed by the server
            assert time.monotonic() - t0 < 4
        # Between the two, a request served as usual.
        assert exchange(s.port, get())[0] == 200
    finally:
        assert s.stop() == 0, s.log()


def test_limits_are_settings_and_flags(tmp_path: Path) -> None:
    s = ServerProcess(
        "--max-header-count", "10", "--max-url-bytes", "512", name="http-limits-flags"
    ).wait_ready()
    try:
        assert exchange(s.port, get(headers=fields(9)))[0] == 200
        assert exchange(s.port, get(headers=fields(10)))[0] == 431
        assert exchange(s.port, get(path=b"/" + b"a" * 600))[0] == 414
    finally:
        assert s.stop() == 0, s.log()
    defaults = ServerSettings()
    assert (defaults.max_header_bytes, defaults.max_header_count, defaults.max_url_bytes) == (
        65536,
        100,
        8192,
    )


def test_h11_bounds_the_head_too(h11_server: ServerProcess) -> None:
    """h11 buffers the head up to a bound (uvicorn's public
    h11_max_incomplete_event_size) and the app's edge counts fields and the target."""
    port = h11_server.port
    assert exchange(port, get(headers=fields(10)))[0] == 200
    status, _, body = exchange(port, get(headers=fields(25)))
    assert (status, json.loads(body)) == (431, {"error": "more than 20 request header fields"})
    status, _, body = exchange(port, get(path=b"/v2/health/ready?" + b"q" * 1100))
    assert status == 414, body
    # A head that never ends: refused once it passes the bound, whatever it holds.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nX-Huge: ")
        try:
            for _ in range(64):
                sock.sendall(b"a" * 1024)
                time.sleep(0.001)
        except OSError:
            pass
        status, headers, body = read_response(sock)
    assert status == 431 and headers["connection"] == "close", body


def test_protocol_choice() -> None:
    """servekit runs httptools when it is installed, as uvicorn's "auto" does."""
    import uvicorn.config

    auto = uvicorn.config.Config("x:y", http="auto")
    auto_class = uvicorn.config.import_from_string(uvicorn.config.HTTP_PROTOCOLS[auto.http])
    assert protocol_class("auto").__mro__[2] is auto_class
    assert issubclass(protocol_class("auto"), HttpToolsLimited)
    assert protocol_class("h11") is H11Limited


# -- the fallbacks, in-process: uvicorn's protocol fed bytes through a recording transport --


class RecordingTransport(asyncio.Transport):
    """What a protocol writes, and whether it closed: the one fake here (a transport
    that a test can read back; the protocol and the parser are real)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def _app(scope: Any, receive: Any, send: Any) -> None:
    body = b'{"ok": true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def connect(parser: str, limits: HttpLimits) -> tuple[Any, RecordingTransport]:
    from uvicorn.server import ServerState

    config = uvicorn.Config(_app, h11_max_incomplete_event_size=limits.max_head_bytes)
    config.load()
    protocol = protocol_class(parser)(  # type: ignore[arg-type]
        config=config, server_state=ServerState(), app_state={}, limits=limits
    )
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_a_drain_refusal_without_uvicorn_s_scope_is_answered_by_the_protocol(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The edge answers a request after the stop began, marked in uvicorn's ``scope``;
    when that is not there, the protocol answers it itself."""
    protocol, transport = connect("httptools", HttpLimits())
    protocol.shutdown()  # idle: kept open for the grace, new requests refused
    base = HttpToolsLimited.__mro__[2]
    monkeypatch.setattr(base, "on_message_begin", lambda self: None)  # sets no scope
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"retry-after: 1\r\n" in transport.written and transport.eof


async def test_h11_s_own_bound_holds_when_its_buffer_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``H11Limited`` reads h11's buffer through uvicorn's ``conn``; without it, the
    bound h11 itself keeps (uvicorn's public h11_max_incomplete_event_size) refuses."""
    limits = HttpLimits(max_url_bytes=256, max_header_bytes=1024)
    monkeypatch.setattr(H11Limited, "_buffered_head", lambda self: 0)
    protocol, transport = connect("h11", limits)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: t\r\nX-Huge: ")
    for _ in range(4):
        if transport.closed:
            break
        protocol.data_received(b"a" * 1024)
    assert transport.written.startswith(b"HTTP/1.1 400 ") and transport.closed
    # With the buffer readable, the answer is servekit's own 431.
    monkeypatch.undo()
    protocol, transport = connect("h11", limits)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: t\r\nX-Huge: ")
    for _ in range(4):
        protocol.data_received(b"a" * 1024)
    assert transport.written.startswith(b"HTTP/1.1 431 ")
