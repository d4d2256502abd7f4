"""Failures that must not be silent: a model that fails to load, at start or when its
files change under a polling server, is logged once (until its files change), and says
why in the repository index, in /v1/models and in ``servekit_model_load_failing``;
public answers name files relative to the repository, never by their absolute path.

In-process (the app with its lifespan behind ``httpx.ASGITransport``); a poll is one
call of ``ModelRegistry.poll_once`` so that each step is deterministic.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, digits_rows
from servekit.config import ServerSettings
from servekit.repository import ModelRegistry, relative_message
from servekit.server.app import create_app

TOKEN = "t"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ROW = digits_rows(1)[0].tolist()
GOOD = REPO / "digits" / "1" / "model.tflite"
GARBAGE = b"this is not a flatbuffer" * 10


def add_model(repo: Path, name: str, version: int = 1, content: bytes | None = None) -> Path:
    folder = repo / name / str(version)
    folder.mkdir(parents=True)
    path = folder / "model.tflite"
    if content is None:
        shutil.copy(GOOD, path)
    else:
        path.write_bytes(content)
    return path


def rewrite(path: Path, content: bytes) -> None:
    """New content with a new mtime, even on a file system with coarse timestamps."""
    before = path.stat().st_mtime_ns
    path.write_bytes(content)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


class Server:
    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app, self.c = app, client

    @property
    def registry(self) -> ModelRegistry:
        registry: ModelRegistry = self.app.state.registry
        return registry

    async def index(self) -> dict[tuple[str, str], dict[str, str]]:
        r = await self.c.post("/v2/repository/index", headers=ADMIN)
        assert r.status_code == 200, r.text
        return {(row["name"], row["version"]): row for row in r.json()}

    async def listed(self) -> dict[tuple[str, str], dict[str, str]]:
        r = await self.c.get("/v1/models")  # no token: the public list
        assert r.status_code == 200, r.text
        return {(row["name"], row["version"]): row for row in r.json()}

    async def predict(self, name: str) -> httpx.Response:
        return await self.c.post(f"/v1/models/{name}:predict", json={"instances": [ROW]})

    async def gauge(self, name: str, **labels: str) -> float | None:
        text = (await self.c.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None


@asynccontextmanager
async def serve(repo: Path, **settings: Any) -> AsyncIterator[Server]:
    app = create_app(ServerSettings(model_path=repo, admin_token=TOKEN, **settings))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sk", timeout=30
        ) as client,
    ):
        yield Server(app, client)


def real_path(path: Path) -> str:
    return os.path.realpath(path)


def failure_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and f"model {name}" in r.getMessage()
    ]


# -- a serving file overwritten with garbage (poll mode) -----------------------------------


async def test_a_changed_file_that_fails_is_shown_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "repo"
    path = add_model(repo, "digits")
    async with serve(repo, model_control_mode="poll", poll_interval_s=3600) as s:
        assert (await s.index())[("digits", "1")]["reason"] == ""
        rewrite(path, GARBAGE)
        caplog.clear()
        for _ in range(5):  # five polls, one failed load and one log line
            await s.registry.poll_once()
        assert len(failure_lines(caplog, "digits")) == 1, caplog.text

        # The copy loaded before serves on; the index and the metrics say the new one failed.
        assert (await s.predict("digits")).status_code == 200
        row = (await s.index())[("digits", "1")]
        assert row["state"] == "READY"
        assert row["reason"].startswith("serving the copy loaded before; the changed files")
        assert row["reason"].count("failed to load") == 1, row
        assert "digits/1/model.tflite is not a TFLite model" in row["reason"]
        assert str(tmp_path) not in row["reason"]
        assert (await s.listed())[("digits", "1")]["reason"] == row["reason"]
        assert await s.gauge("servekit_model_load_failing", model="digits", version="1") == 1
        # The candidate's LOADING/UNAVAILABLE did not overwrite the serving copy's state.
        assert await s.gauge("servekit_model_state", model="digits", state="READY") == 1

        # Once the file changes again, it is tried again: fixed, the reason goes.
        rewrite(path, GOOD.read_bytes())
        await s.registry.poll_once()
        assert (await s.index())[("digits", "1")] == {
            "name": "digits",
            "version": "1",
            "state": "READY",
            "reason": "",
        }
        assert await s.gauge("servekit_model_load_failing", model="digits", version="1") == 0


async def test_a_new_version_that_fails_is_tried_once_per_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "digits")
    async with serve(repo, model_control_mode="poll", poll_interval_s=3600) as s:
        caplog.clear()
        broken = add_model(repo, "digits", 2, GARBAGE)
        for _ in range(4):
            await s.registry.poll_once()
        assert len(failure_lines(caplog, "digits")) == 1, caplog.text
        index = await s.index()
        assert index[("digits", "1")]["state"] == "READY"  # still serving
        assert index[("digits", "2")]["state"] == "UNAVAILABLE"
        assert "digits/2/model.tflite is not a TFLite model" in index[("digits", "2")]["reason"]
        assert str(tmp_path) not in str(index)
        assert (await s.predict("digits")).status_code == 200
        rewrite(broken, GOOD.read_bytes())
        await s.registry.poll_once()
        index = await s.index()
        assert index[("digits", "2")]["state"] == "READY"
        assert ("digits", "1") not in index or index[("digits", "1")]["state"] != "READY"


# -- removed versions ----------------------------------------------------------------------


async def test_removing_the_last_version_unloads_the_model(tmp_path: Path) -> None:
    """As TF Serving does: a version gone from disk is unloaded, even the last one."""
    repo = tmp_path / "repo"
    add_model(repo, "digits")
    add_model(repo, "other")
    async with serve(repo, model_control_mode="poll", poll_interval_s=60) as s:
        assert (await s.predict("digits")).status_code == 200
        shutil.rmtree(repo / "digits" / "1")
        await s.registry.poll_once()
        r = await s.predict("digits")
        assert r.status_code == 503, r.text
        assert "has no versions" in r.json()["error"]
        assert r.headers.get("Retry-After") == "60"  # the next poll may bring one back
        listed = await s.listed()
        assert listed[("digits", "")]["state"] == "UNAVAILABLE"
        assert "removed from the repository were unloaded" in listed[("digits", "")]["reason"]
        assert ("digits", "1") not in listed
        assert (await s.index())[("digits", "")]["state"] == "UNAVAILABLE"
        assert await s.gauge("servekit_model_load_failing", model="digits", version="") == 1
        # The other model serves, and the server stays ready (strict readiness is off).
        assert (await s.predict("other")).status_code == 200
        assert (await s.c.get("/v2/health/ready")).status_code == 200

        add_model(repo, "digits", 3)  # a version comes back
        await s.registry.poll_once()
        assert (await s.predict("digits")).status_code == 200
        assert ("digits", "") not in await s.listed()
        assert await s.gauge("servekit_model_load_failing", model="digits", version="") == 0


async def test_a_removed_version_goes_even_when_the_wanted_one_failed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "digits")
    async with serve(repo, model_control_mode="poll", poll_interval_s=3600) as s:
        add_model(repo, "digits", 2, GARBAGE)
        await s.registry.poll_once()  # 2 failed: 1 stays, its folder is there
        assert (await s.index())[("digits", "1")]["state"] == "READY"
        shutil.rmtree(repo / "digits" / "1")
        await s.registry.poll_once()  # 1 is gone from disk: unloaded
        assert ("digits", "1") not in await s.listed()
        assert (await s.predict("digits")).status_code == 503


# -- failures at start ---------------------------------------------------------------------


def broken_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    add_model(repo, "good")
    outside = tmp_path / "outside.tflite"
    shutil.copy(GOOD, outside)
    (repo / "linked" / "1").mkdir(parents=True)
    (repo / "linked" / "1" / "model.tflite").symlink_to(outside)
    add_model(repo, "badconf")
    (repo / "badconf" / "config.yaml").write_text("max_batch_size: 0\n")
    add_model(repo, "garbage", content=GARBAGE)
    (repo / "empty").mkdir()
    return repo


async def test_failures_at_start_are_logged_and_listed_without_server_paths(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = broken_repo(tmp_path)
    caplog.set_level(logging.INFO)
    async with serve(repo) as s:
        for name, words in [
            ("linked", "links outside the repository"),
            ("badconf", "max_batch_size"),
            ("garbage", "is not a TFLite model"),
            ("empty", "has no versions"),
        ]:
            lines = failure_lines(caplog, name)
            assert len(lines) == 1 and words in lines[0], (name, caplog.text)
        listed = await s.listed()
        for key, words in [
            (("linked", ""), "links outside the repository"),
            (("badconf", ""), "max_batch_size"),
            (("garbage", "1"), "garbage/1/model.tflite is not a TFLite model"),
            (("empty", ""), "has no versions"),
        ]:
            assert listed[key]["state"] == "UNAVAILABLE", (key, listed)
            assert words in listed[key]["reason"], (key, listed[key])
        assert listed[("good", "1")]["state"] == "READY"
        index = await s.index()
        assert index[("badconf", "1")]["reason"] == listed[("badconf", "")]["reason"]
        assert index[("linked", "")]["reason"] == listed[("linked", "")]["reason"]
        everything = str(listed) + str(index)
        hidden = (str(tmp_path), real_path(tmp_path))
        assert not any(h in everything for h in hidden)

        for name in ("linked", "badconf", "garbage", "empty"):
            r = await s.predict(name)
            assert r.status_code == 503, (name, r.text)
            assert not any(h in r.text for h in hidden)
            # Failed for good: only an operator can change it, a retry storm helps nobody.
            assert "Retry-After" not in r.headers, (name, r.headers)
        # The same when the failed version is named.
        r = await s.c.post("/v1/models/garbage/versions/1:predict", json={"instances": [ROW]})
        assert r.status_code == 503 and "is not a TFLite model" in r.text, r.text
        assert "Retry-After" not in r.headers, r.headers
        assert (await s.predict("good")).status_code == 200
        assert await s.gauge("servekit_model_load_failing", model="badconf", version="") == 1
        assert await s.gauge("servekit_model_load_failing", model="garbage", version="1") == 1


async def test_a_polling_server_logs_an_unfixed_repository_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = broken_repo(tmp_path)
    async with serve(repo, model_control_mode="poll", poll_interval_s=3600) as s:
        caplog.clear()
        for _ in range(5):
            await s.registry.poll_once()
        noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert noisy == [], noisy
        (repo / "badconf" / "config.yaml").write_text("max_batch_size: 8\n")
        await s.registry.poll_once()
        assert (await s.predict("badconf")).status_code == 200
        assert ("badconf", "") not in await s.listed()


async def test_the_management_api_tries_a_failed_model_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An explicit load is a request to try: it loads again (and says why it failed)
    whether or not the files changed; only the poll waits for a change."""
    repo = tmp_path / "repo"
    add_model(repo, "good")
    add_model(repo, "garbage", content=GARBAGE)
    async with serve(repo, model_control_mode="explicit", load_models=["good", "garbage"]) as s:
        caplog.clear()
        for _ in range(2):
            r = await s.c.post("/v2/repository/models/garbage/load", headers=ADMIN)
            assert r.status_code == 400, r.text
            assert "garbage/1/model.tflite is not a TFLite model" in r.json()["error"]
            assert real_path(tmp_path) not in r.text and str(tmp_path) not in r.text
        assert len(failure_lines(caplog, "garbage")) == 2, caplog.text


def test_relative_message_cuts_whole_repository_paths_only(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    text = f"{repo}/digits/1/model.tflite is not a TFLite model; {repo}2/x and {repo}"
    assert relative_message(text, repo) == (
        f"digits/1/model.tflite is not a TFLite model; {repo}2/x and ."
    )
    relative = Path("models")  # as given on the command line
    assert (
        relative_message("no models in models/digits/1/model.tflite", relative)
        == "no models in digits/1/model.tflite"
    )
    assert relative_message("anything", None) == "anything"
