"""Readiness policy: Triton's two switches as settings.

``strict_readiness`` (off by default): on, the server is ready only when every model is;
off, once start-up loading is over and some model serves, so one broken model does not
take the healthy ones out of a load balancer. ``exit_on_error`` (off by default): start-up
fails, naming every model that failed. Through HTTP (/v2/health/ready) and gRPC (KServe
ServerReady, grpc.health.v1) in-process; real servers for the exit and the default.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import NO_GRPC, REPO, ROOT, ServerProcess, free_port
from servekit.config import ServerSettings, load_settings
from servekit.errors import BadInput
from servekit.server.app import create_app

GOOD = REPO / "digits" / "1" / "model.tflite"


def make_repo(tmp_path: Path, good: int = 1, broken: int = 1) -> Path:
    repo = tmp_path / "repo"
    for i in range(good):
        (repo / f"good{i}" / "1").mkdir(parents=True)
        shutil.copy(GOOD, repo / f"good{i}" / "1" / "model.tflite")
    for i in range(broken):
        (repo / f"broken{i}" / "1").mkdir(parents=True)
        (repo / f"broken{i}" / "1" / "model.tflite").write_bytes(b"not a flatbuffer" * 8)
    return repo


@asynccontextmanager
async def serve(repo: Path, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
    port = free_port()
    app = create_app(ServerSettings(model_path=repo, grpc_port=port, **settings))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sk") as c,
    ):
        yield c, port


def grpc_ready(port: int) -> tuple[bool, int]:
    """KServe's ServerReady, and grpc.health.v1's status of the whole server."""
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        ready = client.is_server_ready()
    finally:
        client.close()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return ready, health.status


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServerSettings()
    assert settings.strict_readiness is False and settings.exit_on_error is False
    monkeypatch.setenv("SERVEKIT_STRICT_READINESS", "true")
    monkeypatch.setenv("SERVEKIT_EXIT_ON_ERROR", "1")
    settings = load_settings()
    assert settings.strict_readiness is True and settings.exit_on_error is True


async def test_one_failed_model_leaves_the_server_ready(tmp_path: Path) -> None:
    async with serve(make_repo(tmp_path, good=2, broken=1)) as (c, port):
        r = await c.get("/v2/health/ready")
        assert r.status_code == 200 and r.json() == {"ready": True}
        assert await asyncio.to_thread(grpc_ready, port) == (
            True,
            health_pb2.HealthCheckResponse.SERVING,
        )
        assert (await c.get("/v2/models/broken0/ready")).status_code == 400  # as Triton
        assert (await c.get("/v2/models/good0/ready")).status_code == 200


async def test_strict_readiness_needs_every_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVEKIT_STRICT_READINESS", "true")
    async with serve(make_repo(tmp_path, good=2, broken=1)) as (c, port):
        r = await c.get("/v2/health/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        assert await asyncio.to_thread(grpc_ready, port) == (
            False,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        assert (await c.get("/v2/models/good0/ready")).status_code == 200


async def test_strict_readiness_with_every_model_ready(tmp_path: Path) -> None:
    async with serve(make_repo(tmp_path, good=2, broken=0), strict_readiness=True) as (c, _):
        assert (await c.get("/v2/health/ready")).status_code == 200


async def test_no_model_serving_is_never_ready(tmp_path: Path) -> None:
    async with serve(make_repo(tmp_path, good=0, broken=2)) as (c, _):
        assert (await c.get("/v2/health/ready")).status_code == 503


async def test_exit_on_error_fails_start_up_naming_every_failure(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, good=1, broken=2)
    with pytest.raises(BadInput) as failed:
        async with serve(repo, exit_on_error=True):
            pytest.fail("started although models failed and exit_on_error is set")
    message = str(failed.value)
    assert "2 model(s) failed to load" in message and "exit_on_error" in message
    assert "broken0" in message and "broken1" in message and "\n" not in message


async def test_exit_on_error_starts_when_every_model_loads(tmp_path: Path) -> None:
    async with serve(make_repo(tmp_path, good=1, broken=0), exit_on_error=True) as (c, _):
        assert (await c.get("/v2/health/ready")).status_code == 200


def test_real_server_default_is_ready_and_exit_on_error_exits(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, good=1, broken=1)
    server = ServerProcess(str(repo), name="readiness").wait_ready()  # ready by default
    try:
        r = httpx.get(f"{server.url}/v1/models")
        assert {(m["name"], m["state"]) for m in r.json()} == {
            ("good0", "READY"),
            ("broken0", "UNAVAILABLE"),
        }
    finally:
        assert server.stop() == 0, server.log()
    done = subprocess.run(
        [sys.executable, "-m", "servekit", "serve", str(repo), "--port", str(free_port())],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")},
            **NO_GRPC,
            "SERVEKIT_EXIT_ON_ERROR": "true",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0, done.stderr
    assert "broken0" in done.stderr and "exit_on_error" in done.stderr, done.stderr
