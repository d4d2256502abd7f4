"""The edges of a graceful stop (issue 21, defect 4): real server processes, SIGTERM,
raw sockets. Whatever a client was doing when the stop began, it gets an answer that
says what happened (200, or 503 with Retry-After and Connection: close), or a refused
connection: never a 500, a traceback or a silent reset."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np

from conftest import MODELS, ServerProcess
from servekit.config import ServerSettings
from servekit.server.httpserver import uvicorn_options
from test_http_limits import read_response

SLOW_ROW = np.linspace(-1, 1, 64).tolist()


def stopped_within(server: ServerProcess, seconds: float) -> float:
    """Wait for the process to exit 0; how long it took."""
    t0 = time.monotonic()
    code = server.proc.wait(seconds)
    took = time.monotonic() - t0
    assert code == 0, server.log()
    return took


def test_a_drain_timeout_under_one_second_is_kept() -> None:
    """`int(0.5) or None` made 0.5 s (and 0) mean "wait forever"."""
    for seconds in (0.5, 0.0, 12.5):
        options = uvicorn_options(ServerSettings(drain_timeout_s=seconds))
        assert options["timeout_graceful_shutdown"] == seconds


def test_half_a_body_holds_the_stop_for_the_drain_timeout_only() -> None:
    server = ServerProcess(env={"SERVEKIT_DRAIN_TIMEOUT_S": "0.5"}, name="drain-half").wait_ready()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: t\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                b'{"instances": [[0.1, '
            )
            time.sleep(0.3)  # the request is being read
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            status, headers, body = read_response(sock)
            answered_s = time.monotonic() - t0
        assert status == 503, body
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        assert "shutting down" in json.loads(body)["error"]
        assert answered_s < 3, answered_s
        assert stopped_within(server, 10) < 5
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


async def test_requests_cut_by_the_drain_timeout_get_503_and_retry_after(tmp_path: Path) -> None:
    """~17 ms a request, one at a time: 80 queued requests need ~1.4 s; the drain
    timeout of 0.5 s cuts the rest, which were never computed."""
    repo = tmp_path / "repo"
    shutil.copytree(MODELS / "slow" / "slow", repo / "slow")
    (repo / "slow" / "config.yaml").write_text(
        "max_batch_size: 1\ninstances: 1\ntimeout_ms: 60000\nmax_queue_size: 1000\n"
    )
    server = ServerProcess(
        str(repo), env={"SERVEKIT_DRAIN_TIMEOUT_S": "0.5"}, name="drain-cut"
    ).wait_ready()
    try:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as c:

            async def one() -> httpx.Response:
                return await c.post("/v1/models/slow:predict", json={"instances": [SLOW_ROW]})

            calls = [asyncio.create_task(one()) for _ in range(80)]
            await asyncio.sleep(0.5)  # all sent and queued
            server.proc.send_signal(signal.SIGTERM)
            rs = await asyncio.gather(*calls)
        codes = [r.status_code for r in rs]
        assert set(codes) <= {200, 503}, codes
        cut = [r for r in rs if r.status_code == 503]
        assert cut, codes
        for r in cut:
            assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
            assert "shutting down" in r.json()["error"]
        assert await asyncio.to_thread(stopped_within, server, 15) < 5
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log and "CancelledError" not in log, log


def test_a_request_on_an_idle_keep_alive_connection_during_the_stop_is_refused_with_503() -> None:
    """uvicorn closes idle keep-alive connections when the stop begins, so a request
    already on its way on one was reset without an answer. Now it gets 503 and
    Connection: close, and the client knows it was refused, not lost."""
    server = ServerProcess(name="drain-keepalive").wait_ready()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, _ = read_response(sock)
            assert status == 200 and headers.get("connection") != "close"
            server.proc.send_signal(signal.SIGTERM)
            wait_for_the_listener_to_close(server)
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, body = read_response(sock)
            assert status == 503, body
            assert headers["connection"] == "close" and headers["retry-after"] == "1"
            assert json.loads(body) == {"error": "server shutting down"}
            sock.settimeout(5)
            assert sock.recv(1) == b""
        assert stopped_within(server, 10) < 5
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_a_request_half_arrived_when_the_stop_began_is_refused_with_503() -> None:
    """Its head was still arriving: uvicorn closed the connection under it."""
    server = ServerProcess(name="drain-head").wait_ready()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n")
            time.sleep(0.3)
            server.proc.send_signal(signal.SIGTERM)
            wait_for_the_listener_to_close(server)
            sock.sendall(b"Accept: */*\r\n\r\n")
            status, headers, body = read_response(sock)
            assert (status, headers["connection"]) == (503, "close"), body
        assert stopped_within(server, 10) < 5
    finally:
        server.stop()


def wait_for_the_listener_to_close(server: ServerProcess) -> None:
    """The stop has begun once the listener refuses new connections."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.01)
    raise AssertionError("the listener stayed open 5 s after SIGTERM")


def test_an_idle_connection_does_not_hold_the_stop() -> None:
    """Idle keep-alive connections stay open for at most a second of grace."""
    server = ServerProcess(name="drain-idle").wait_ready()
    try:
        socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        for sock in socks:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock)[0] == 200
        os.kill(server.proc.pid, signal.SIGTERM)
        assert stopped_within(server, 10) < 3
        for sock in socks:
            sock.settimeout(5)
            assert sock.recv(1) == b""  # closed by the server, not left hanging
            sock.close()
    finally:
        server.stop()
