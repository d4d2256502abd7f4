"""A lean HTTP/1.1 load generator on asyncio streams.

Measured here: 300 concurrent requests take httpx's AsyncClient ~6 s of client-side
overhead (its pool does work per pending request), raw asyncio streams 0.17 s. A load
test must measure the server, not the client, so this is what ``servekit bench`` and
the load tests use. Keep-alive connections are pooled; plain HTTP only.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class _StaleConnection(ConnectionError):
    pass


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class RawClient:
    """Pooled keep-alive HTTP/1.1 connections to one host:port."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http":
            raise ValueError(f"only http:// URLs are supported, got {url!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._idle: list[_Conn] = []

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> Response:
        if self._idle:
            try:
                return await self._send(self._idle.pop(), method, path, body, content_type)
            except _StaleConnection:
                pass  # the server closed it while idle (keep-alive timeout): not read
        return await self._send(await self._connect(), method, path, body, content_type)

    async def _send(
        self, conn: _Conn, method: str, path: str, body: bytes, content_type: str
    ) -> Response:
        try:
            head = (
                f"{method} {self.base_path}{path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                f"{self._extra}\r\n"
            ).encode()
            conn.writer.write(head + body)
            await conn.writer.drain()
            response, keep = await self._read(conn.reader)
        except BaseException:
            conn.close()
            raise
        if keep:
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Conn(reader, writer)

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[Response, bool]:
        status_line = await reader.readline()
        if not status_line:
            raise _StaleConnection("server closed the connection before answering")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while (size := int((await reader.readline()).strip() or b"0", 16)) > 0:
                chunks.append(await reader.readexactly(size))
                await reader.readline()
            await reader.readline()
            body = b"".join(chunks)
        else:
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        keep = headers.get("connection", "").lower() != "close"
        return Response(status, headers, body), keep

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()
        self._idle.clear()


@dataclass
class LoadResult:
    """Outcome of a load run: latencies (seconds) by status, and errors."""

    duration_s: float
    latencies: dict[int, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def ok(self) -> list[float]:
        return self.latencies.get(200, [])

    def throughput(self, status: int = 200) -> float:
        return len(self.latencies.get(status, [])) / self.duration_s if self.duration_s else 0.0

    @staticmethod
    def percentile(xs: list[float], q: float) -> float:
        if not xs:
            return float("nan")
        if len(xs) == 1:
            return xs[0]
        return statistics.quantiles(xs, n=1000, method="inclusive")[round(q * 10) - 1]

    def summary(self) -> dict[str, object]:
        ok = self.ok()
        return {
            "duration_s": round(self.duration_s, 3),
            "requests": self.count,
            "ok": len(ok),
            "errors": self.count - len(ok) + len(self.errors),
            "by_status": {str(k): len(v) for k, v in sorted(self.latencies.items())},
            "throughput_rps": round(self.throughput(), 2),
            "p50_ms": round(self.percentile(ok, 50) * 1000, 3),
            "p99_ms": round(self.percentile(ok, 99) * 1000, 3),
        }


async def closed_loop(
    client_factory: Callable[[], RawClient],
    send: Callable[[RawClient], object],
    *,
    concurrency: int,
    duration_s: float,
    on_response: Callable[[int], None] | None = None,
) -> LoadResult:
    """``concurrency`` users, each sending its next request when the last one answers,
    for ``duration_s`` seconds. ``send(client)`` returns the request's coroutine."""
    result = LoadResult(duration_s)
    deadline = time.monotonic() + duration_s
    start = time.monotonic()

    async def user() -> None:
        client = client_factory()
        try:
            while time.monotonic() < deadline:
                t = time.monotonic()
                try:
                    r = await send(client)  # type: ignore[misc]
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    result.errors.append(f"{type(e).__name__}: {e}")
                    await asyncio.sleep(0.01)
                    continue
                result.latencies.setdefault(r.status, []).append(time.monotonic() - t)
                if on_response is not None:
                    on_response(r.status)
        finally:
            await client.close()

    await asyncio.gather(*(user() for _ in range(concurrency)))
    result.duration_s = time.monotonic() - start
    return result


async def open_loop(
    client: RawClient,
    send: Callable[[RawClient], object],
    *,
    rate: float,
    duration_s: float,
    max_inflight: int = 1000,
) -> LoadResult:
    """Requests at a fixed rate whatever the server does (how overload arrives in real
    life), at most ``max_inflight`` outstanding."""
    result = LoadResult(duration_s)
    tasks: set[asyncio.Task[None]] = set()
    begin = time.monotonic()

    async def one() -> None:
        t = time.monotonic()
        try:
            r = await send(client)  # type: ignore[misc]
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            result.errors.append(f"{type(e).__name__}: {e}")
            return
        result.latencies.setdefault(r.status, []).append(time.monotonic() - t)

    sent = 0
    while (elapsed := time.monotonic() - begin) < duration_s:
        while sent < int(elapsed * rate) and len(tasks) < max_inflight:
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.002)
    result.duration_s = time.monotonic() - begin
    if tasks:
        await asyncio.gather(*tasks)
    return result
