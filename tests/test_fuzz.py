"""schemathesis against the real server's /openapi.json: every operation, every check
but one, a fixed seed. Zero server errors, zero responses that break the schema.

Excluded: ``positive_data_acceptance``. Whether an inference body is valid depends on
the model named in the path (its inputs, shapes, dtypes); OpenAPI cannot tie a body
example to a path value, so schema-valid bodies for one model sent to another are
rightly refused with 400.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ARTIFACTS, REPO, ServerProcess

TOKEN = "fuzz-admin-token"


@pytest.fixture()
def fuzz_server(tmp_path: Path) -> Iterator[ServerProcess]:
    repo = tmp_path / "repo"
    for name in ("digits", "multi", "digits_int8", "lookup"):
        shutil.copytree(REPO / name, repo / name)
    server = ServerProcess(
        str(repo),
        "--model-control-mode",
        "explicit",
        "--load-model",
        "digits",
        "--load-model",
        "multi",
        "--load-model",
        "digits_int8",
        "--load-model",
        "lookup",
        env={"SERVEKIT_ADMIN_TOKEN": TOKEN},
        name="fuzz",
    ).wait_ready()
    yield server
    assert server.stop() == 0, server.log()


def test_schemathesis_finds_no_server_errors_or_schema_violations(
    fuzz_server: ServerProcess,
) -> None:
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{fuzz_server.url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--seed",
        "20261124",
        "--max-examples",
        "25",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis.txt").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout[-6000:]
    assert "Tested: " in r.stdout and " 0 generated" not in r.stdout
    log = fuzz_server.log()
    assert "Traceback" not in log and "500 Internal Server Error" not in log
