"""Real server processes for benchmarks on a free port: ``python -m servekit serve``, or
any other server command (the runner's uvicorn apps).

Deliberately independent of the test suite (benchmarks import nothing from ``tests``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now (bound together, then released)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


class ChildServer:
    """A server started as ``command --port <free port>``, its output in ``log_path``
    (a temp file by default), ready once ``ready_path`` answers 200, stopped with
    SIGTERM. Use as a context manager."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        ready_path: str = "/v2/health/ready",
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"server-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**inherited, **(env or {})},
            cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                # Not through a proxy from the environment: the server is on 127.0.0.1.
                url = self.url + self.ready_path
                if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Self:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServerProcess(ChildServer):
    """``python -m servekit serve model_path *args``, its two gRPC APIs on free ports
    (``grpc_port``, ``tfs_grpc_port``) unless ``args`` names them: their defaults,
    8001 and 8500, may be taken, by another server or a test run."""

    def __init__(self, model_path: Path, *args: str, log_path: Path | None = None) -> None:
        command = [sys.executable, "-m", "servekit", "serve", str(model_path), *args]
        port, self.grpc_port, self.tfs_grpc_port = free_ports(3)
        if "--grpc-port" in args:
            self.grpc_port = int(args[args.index("--grpc-port") + 1])
        else:
            command += ["--grpc-port", str(self.grpc_port)]
        if "--tfs-grpc-port" in args:
            self.tfs_grpc_port = int(args[args.index("--tfs-grpc-port") + 1])
        else:
            command += ["--tfs-grpc-port", str(self.tfs_grpc_port)]
        super().__init__(command, log_path=log_path, port=port)
