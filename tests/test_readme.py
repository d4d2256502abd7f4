"""The README's commands marked runnable are run, top to bottom, as a new user would.

The marker is an HTML comment on the line right before a fenced ``bash`` or ``python``
block (the README's Development section says the same):

- ``<!-- runnable -->``: run the block from the repository root (bash with ``set -e``, or
  this venv's python) and require exit status 0;
- ``expect="REGEX"`` (repeatable): the output must match (``re.MULTILINE``);
  ``reject="REGEX"``: it must not;
- ``<!-- runnable: serve port=N -->``: the block starts a server that runs until stopped
  (``make serve``, ``servekit serve ...``). It is started in the background, in its own
  process group; the blocks below run once ``/v2/health/ready`` answers on port N; at the
  end every such server gets SIGTERM and must shut down cleanly.

Ports 8000-8099 and 8500 in commands (``:8000``, ``--port 8000``, ``--grpc-port 8003``,
``make serve PORT=8080``) and markers are replaced by free ports (``make serve`` gets
its port through the PORT variable its Makefile reads, and its gRPC ports through
``SERVEKIT_*`` variables),
so the test runs beside a server a developer already has on 8000. Tools the commands
use are installed with apt-get when missing (CI runs as root on a fresh Debian
machine). Output of every block goes to test-artifacts/readme-*.log.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from conftest import ARTIFACTS, ROOT, free_port

README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- runnable(?::\s*(?P<opts>.*?))?\s*-->$")
FENCE = re.compile(r"^```(?P<lang>\w*)$")
PORT = re.compile(r"(?:(?<=:)|(?<=--port )|(?<=-grpc-port )|(?<=PORT=))(?:80\d\d|8500)(?!\d)")
# Commands the README uses that a fresh Debian machine may lack, and their packages.
TOOLS = {"curl": "curl", "ab": "apache2-utils", "make": "make"}
BLOCK_TIMEOUT_S = 180
SERVE_TIMEOUT_S = 600  # `make serve` may create .venv first


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    serve_port: int | None = None
    expect: list[str] = field(default_factory=list)
    reject: list[str] = field(default_factory=list)

    def where(self) -> str:
        return f"README.md:{self.line}"


def parse(text: str) -> list[Block]:
    """Every marked block; a malformed marker is an error, not a block silently skipped."""
    lines = text.splitlines()
    blocks: list[Block] = []
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if m is None:
            if line.strip().startswith("<!-- runnable"):
                raise ValueError(f"README.md:{i + 1}: malformed marker {line!r}")
            continue
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None or fence["lang"] not in ("bash", "python"):
            raise ValueError(f"README.md:{i + 1}: a marker must precede a ```bash/```python block")
        end = next(j for j in range(i + 2, len(lines)) if lines[j] == "```")
        block = Block(line=i + 2, lang=fence["lang"], code="\n".join(lines[i + 2 : end]) + "\n")
        for opt in shlex.split(m["opts"] or ""):
            key, _, value = opt.partition("=")
            if key == "serve" and not value:
                block.serve_port = -1
            elif key == "port" and value.isdigit():
                block.serve_port = int(value)
            elif key in ("expect", "reject") and value:
                re.compile(value)
                getattr(block, key).append(value)
            else:
                raise ValueError(f"README.md:{i + 1}: unknown marker option {opt!r}")
        if block.serve_port == -1:
            raise ValueError(f"README.md:{i + 1}: 'serve' needs port=N")
        if block.serve_port is not None and (block.lang != "bash" or block.expect):
            raise ValueError(f"README.md:{i + 1}: a serve block is bash, without expect")
        blocks.append(block)
    return blocks


def ensure_tools() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.fail(f"missing Debian packages {missing}: apt-get install them (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        timeout=600,
    )


class Ports:
    """README port -> a free port, the same one every time it is asked again."""

    def __init__(self) -> None:
        self.map: dict[int, int] = {}

    def __call__(self, port: int) -> int:
        return self.map.setdefault(port, free_port())

    def rewrite(self, text: str) -> str:
        return PORT.sub(lambda m: str(self(int(m.group()))), text)


@dataclass
class Server:
    block: Block
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait_ready(self) -> None:
        url = f"http://127.0.0.1:{self.port}/v2/health/ready"
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.block.where()}: server exited:\n{self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"{self.block.where()}: not ready in {SERVE_TIMEOUT_S}s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM to the whole group (make and servekit), as Ctrl-C would reach both."""
        if self.group_alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while self.group_alive() and time.monotonic() < deadline:
            self.proc.poll()  # reap the group leader
            time.sleep(0.1)
        if self.group_alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"{self.block.where()}: still running 60 s after SIGTERM:\n{self.log()}")


def environment(ports: Ports) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}
    env["PORT"] = str(ports(8000))  # the Makefile's default port for `make serve`
    # The gRPC ports a server takes by default (Triton's and TF Serving's).
    env["SERVEKIT_GRPC_PORT"] = str(ports(8001))
    env["SERVEKIT_TFS_GRPC_PORT"] = str(ports(8500))
    return env


def run_block(block: Block, ports: Ports, env: dict[str, str], log: Path) -> None:
    code = ports.rewrite(block.code)
    argv = ["bash", "-e", "-c", code] if block.lang == "bash" else [sys.executable, "-c", code]
    try:
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where()}: still running after {BLOCK_TIMEOUT_S}s:\n{code}")
    out = done.stdout + done.stderr
    with log.open("a") as f:
        f.write(f"===== {block.where()} (exit {done.returncode})\n{code}----- output\n{out}\n")
    context = f"{block.where()}:\n{code}--- output (exit {done.returncode}):\n{out[-4000:]}"
    assert done.returncode == 0, context
    for pattern in block.expect:
        assert re.search(pattern, out, re.MULTILINE), f"expected /{pattern}/ in {context}"
    for pattern in block.reject:
        assert not re.search(pattern, out, re.MULTILINE), f"unexpected /{pattern}/ in {context}"


@pytest.fixture()
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in reversed(started):
        server.stop()


def test_markers_parse_and_cover_the_quickstart() -> None:
    blocks = parse(README.read_text())
    code = "\n".join(b.code for b in blocks)
    serves = [b for b in blocks if b.serve_port is not None]
    assert serves[0].code.split("#")[0].strip() == "make serve"
    for must in ("curl -s localhost:8000/v1/models/digits:predict", "/metrics", "ab -n"):
        assert must in code, must
    assert any(b.lang == "python" for b in blocks)


def test_ports_are_rewritten_wherever_the_readme_names_them() -> None:
    ports = Ports()
    text = ports.rewrite(
        "curl localhost:8000/x; make serve PORT=8080; servekit serve --port 8002 "
        "--grpc-port 8003 --tfs-grpc-port 8500; SERVEKIT_GRPC_PORT=0"
    )
    assert text == (
        f"curl localhost:{ports(8000)}/x; make serve PORT={ports(8080)}; servekit serve "
        f"--port {ports(8002)} --grpc-port {ports(8003)} --tfs-grpc-port {ports(8500)}; "
        f"SERVEKIT_GRPC_PORT=0"
    )


def test_what_a_new_user_needs_is_said() -> None:
    """Frictions of the first hour (issue 22): a taken port, the interpreter Python
    snippets need, install commands that work without a package index, a Keras example
    worth optimizing, and int8 calibrated on real rows."""
    text = README.read_text()
    assert "make serve PORT=" in text
    assert ".venv/bin/python" in text and "`python3` lacks" in text
    # servekit is on no package index: every install names this checkout or a wheel.
    assert "pip install 'servekit[" not in text and "pip install servekit" not in text
    assert "pip install '.[onnx]'" in text and "uv build" in text
    blocks = parse(text)
    keras = next(b for b in blocks if "keras.Sequential" in b.code)
    assert "load_digits" in keras.code and any("accuracy 0" in e for e in keras.expect)
    compare = next(b for b in blocks if "optimize" in b.code and "--compare" in b.code)
    assert "--representative-data" in compare.code and "--validation-data" in compare.code
    assert "RANDOM" in compare.reject  # no random-calibration warning with real rows


def test_parse_rejects_malformed_markers() -> None:
    with pytest.raises(ValueError, match="must precede"):
        parse("<!-- runnable -->\ntext\n")
    with pytest.raises(ValueError, match="unknown marker option"):
        parse("<!-- runnable: expec=x -->\n```bash\ntrue\n```\n")
    with pytest.raises(ValueError, match="malformed"):
        parse("<!-- runnable expect=x -->\n```bash\ntrue\n```\n")
    assert parse("<!-- runnable -->\n```python\nprint(1)\n```\n")[0].code == "print(1)\n"


@pytest.mark.timeout(SERVE_TIMEOUT_S + 600)
def test_readme_commands_run_top_to_bottom(servers: list[Server]) -> None:
    ensure_tools()
    blocks = parse(README.read_text())
    ports = Ports()
    env = environment(ports)
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "readme-blocks.log"
    log.write_text("")
    for block in blocks:
        if block.serve_port is None:
            run_block(block, ports, env, log)
            continue
        port = ports(block.serve_port)
        server_log = ARTIFACTS / f"readme-server-{port}.log"
        with server_log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-e", "-c", ports.rewrite(block.code)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = Server(block, port, proc, server_log)
        servers.append(server)
        server.wait_ready()
    for server in reversed(servers):
        server.stop()
        assert "Application shutdown complete" in server.log(), server.log()
    servers.clear()
