"""Shared fixtures: real servekit processes on 127.0.0.1 and the direct interpreter."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "models"
REPO = MODELS / "repo"
DEMO = ROOT / "src" / "servekit" / "demo"
ARTIFACTS = ROOT / "test-artifacts"


# gRPC listens on 8001 and 8500 by default: servers started by tests do not, unless a
# test asks (several servers at once would compete for those ports).
NO_GRPC = {"SERVEKIT_GRPC_PORT": "0", "SERVEKIT_TFS_GRPC_PORT": "0"}


@pytest.fixture(autouse=True)
def _no_default_grpc_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process apps (ServerSettings() reads the environment) leave the ports alone."""
    for key, value in NO_GRPC.items():
        monkeypatch.setenv(key, value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m servekit serve ...` (or another server ``command``) as a child
    process, logs in a file."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        name: str = "server",
        command: Sequence[str] = (sys.executable, "-m", "servekit", "serve"),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{name}-{self.port}.log"
        self._log = self.log_path.open("wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}
        full_env.update(NO_GRPC)  # tests that use gRPC pass their own ports
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [*command, *args, "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

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


@pytest.fixture(scope="session")
def repo_server() -> Iterator[ServerProcess]:
    """servekit serving tests/models/repo (every test model), shared by the session."""
    server = ServerProcess(str(REPO), name="repo").wait_ready()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="session")
def demo_server() -> Iterator[ServerProcess]:
    """servekit with no model path: the bundled demo."""
    server = ServerProcess(name="demo").wait_ready()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture()
def client(repo_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=repo_server.url, timeout=30) as c:
        yield c


def model_path(name: str) -> Path:
    return REPO / name / "1" / "model.tflite"


def direct_predict(name: str, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The reference: ai-edge-litert's own signature runner, no servekit code at all."""
    interp = Interpreter(model_path=str(model_path(name)))
    runner = interp.get_signature_runner("serving_default")
    return {k: np.array(v) for k, v in runner(**inputs).items()}


def digits_rows(n: int, offset: int = 0) -> np.ndarray:
    """Real digits rows (256 drawn from sklearn's load_digits, scaled to [0, 1])."""
    with np.load(MODELS / "digits_sample.npz") as data:
        x = data["x"]
    return np.asarray(x[offset : offset + n], dtype=np.float32)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made here."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=servekit test CA",
        cwd=d,
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return d


@asynccontextmanager
async def serve_digits(root_path: str = "", **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process (its own ASGI entry, servekit's layers, the lifespan run as a
    server runs it) serving the repository's digits model, through httpx."""
    from servekit.config import ServerSettings
    from servekit.server.app import create_app

    app = create_app(
        ServerSettings(
            model_path=REPO, model_control_mode="explicit", load_models=["digits"], **settings
        )
    )
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://servekit") as client,
    ):
        yield client
