"""Settings precedence, model configs, and the CLI's contract (one-line errors)."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import NO_GRPC, REPO, ROOT, free_port
from servekit.config import ModelConfig, ServerSettings, load_settings
from servekit.errors import BadInput


def test_precedence_cli_over_env_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text("port: 9001\nhost: 0.0.0.0\nlog_level: warning\n")
    assert load_settings(cfg).port == 9001
    monkeypatch.setenv("SERVEKIT_PORT", "9002")
    s = load_settings(cfg)
    assert (s.port, s.host, s.log_level) == (9002, "0.0.0.0", "warning")
    assert load_settings(cfg, port=9003).port == 9003
    assert load_settings(None).port == 9002


def test_example_configs_are_valid() -> None:
    s = load_settings(ROOT / "configs" / "server.yaml")
    assert isinstance(s, ServerSettings) and s.model_path is not None
    m = ModelConfig.from_yaml(ROOT / "configs" / "model.yaml")
    assert m.buckets() == [1, 2, 4, 8, 16, 32]


def test_invalid_settings_name_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text("port: -5\n")
    with pytest.raises(BadInput, match="port"):
        load_settings(cfg)
    cfg.write_text("- not a mapping\n")
    with pytest.raises(BadInput, match="mapping"):
        load_settings(cfg)


def test_model_config_rules(tmp_path: Path) -> None:
    assert ModelConfig(max_batch_size=12).buckets() == [1, 2, 4, 8, 12]
    assert ModelConfig(max_batch_size=1).buckets() == [1]
    bad = tmp_path / "config.yaml"
    bad.write_text("batch_buckets: [4, 2]\n")
    with pytest.raises(BadInput, match="increasing"):
        ModelConfig.from_yaml(bad)
    bad.write_text("max_batch_size: 8\nbatch_buckets: [1, 16]\n")
    with pytest.raises(BadInput, match="exceeds max_batch_size"):
        ModelConfig.from_yaml(bad)
    bad.write_text("max_queue_delay_ms: 50\ntimeout_ms: 10\n")
    with pytest.raises(BadInput, match="below timeout_ms"):
        ModelConfig.from_yaml(bad)
    bad.write_text("unknown_knob: 1\n")
    with pytest.raises(BadInput, match="unknown_knob"):
        ModelConfig.from_yaml(bad)


def servekit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servekit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_inspect_prints_the_signature() -> None:
    r = servekit("inspect", str(REPO / "multi" / "1" / "model.tflite"))
    assert r.returncode == 0, r.stderr
    for word in ("features", "bias", "INT32", "logits", "label", "INT64", "[-1, 64]"):
        assert word in r.stdout
    r = servekit("inspect", str(REPO / "digits_int8" / "1" / "model.tflite"), "--json")
    assert r.returncode == 0 and '"zero_point"' in r.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["serve", "does/not/exist"], ["does/not/exist", "does not exist"]),
        (["serve", "pyproject.toml"], ["not a model file: expected .tflite", "repository"]),
        (["serve", "tests"], ["no models in tests"]),
        (["inspect", "pyproject.toml"], ["not a model file: expected .tflite"]),
        (["inspect", "README.md.tflite"], ["README.md.tflite"]),
        (["serve", "--port", "99999"], ["port"]),
        (["serve", "--port", "abc"], ["--port"]),
        (["--bogus"], ["--bogus"]),
        (["inspect"], ["Missing argument"]),
    ],
)
def test_cli_errors_are_one_line_and_nonzero(args: list[str], words: list[str]) -> None:
    r = servekit(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0]


def test_help_has_examples() -> None:
    for args in (["--help"], ["serve", "--help"], ["inspect", "--help"]):
        r = servekit(*args)
        assert r.returncode == 0 and "Example" in r.stdout, r.stdout


# -- start-up failures of `servekit serve`: one line too (issue 21, defect 8) --------------

# An 824-byte TFLite model whose one op is Digamma, a custom op no runtime here resolves
# (tf.math.digamma converted with allow_custom_ops=True by TensorFlow 2.21).
CUSTOM_OP_TFLITE = base64.b64decode(
    "HAAAAFRGTDMUACAAHAAYABQAEAAMAAAACAAEABQAAAAcAAAAhAAAANwAAACMAQAAnAEAANQCAAADAAAAAQAAABAA"
    "AAAAAAoAEAAMAAgABAAKAAAADAAAABwAAAA0AAAADwAAAHNlcnZpbmdfZGVmYXVsdAABAAAABAAAAKT///8BAAAA"
    "BAAAAAEAAAB5AAAAAQAAAAQAAAAO////BAAAAAEAAAB4AAAAAgAAADQAAAAEAAAA3P///wQAAAAEAAAAEwAAAENP"
    "TlZFUlNJT05fTUVUQURBVEEACAAMAAgABAAIAAAAAwAAAAQAAAATAAAAbWluX3J1bnRpbWVfdmVyc2lvbgAFAAAA"
    "rAAAAKQAAACcAAAAfAAAAAQAAACS////BAAAAGAAAAAMAAAACAAMAAgABAAIAAAAEAAAACgAAAAIAAwACAAHAAgA"
    "AAAAAAABBAAAAAAAAAAMABgAFAAQAAwABAAMAAAAzNL3DRM9IN8DAAAAAgAAAAQAAAAGAAAAMi4yMS4wAAAAAAYA"
    "CAAEAAYAAAAEAAAAEAAAAAAAAAAAAAAAAAAAAAAAAADQ/v//1P7//9j+//8PAAAATUxJUiBDb252ZXJ0ZWQuAAEA"
    "AAAUAAAAAAAOABgAFAAQAAwACAAEAA4AAAAUAAAAHAAAAGAAAABkAAAAaAAAAAQAAABtYWluAAAAAAEAAAAUAAAA"
    "EAAQAAAADAAIAAAAAAAEABAAAAAMAAAAGAAAABwAAAAMAAAAVAABAwEBAQAEAiQBAQAAAAEAAAABAAAAAAAAAAEA"
    "AAABAAAAAQAAAAAAAAACAAAAYAAAAAQAAAC+////AAAAARAAAAAQAAAAAgAAACAAAACo////EQAAAFBhcnRpdGlv"
    "bmVkQ2FsbDowAAAAAgAAAAEAAAAEAAAAAAAWABgAFAAAABAADAAIAAAAAAAAAAcAFgAAAAAAAAEUAAAAFAAAAAEA"
    "AAAkAAAABAAEAAQAAAATAAAAc2VydmluZ19kZWZhdWx0X3g6MAACAAAAAQAAAAQAAAABAAAAEAAAAAwAEAAPAAgA"
    "AAAEAAwAAAAgAAAACAAAAAAAACAHAAAARGlnYW1tYQA="
)

# ai-edge-litert's C++ side prints this itself when it makes an interpreter.
RUNTIME_BANNER = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def serve_fails(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `servekit serve` that must fail at start-up; its one line on stderr."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}
    full_env.update({**NO_GRPC, **(env or {})})
    r = subprocess.run(
        [sys.executable, "-m", "servekit", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=full_env,
    )
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and ln != RUNTIME_BANNER]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


def test_serve_a_custom_op_model_fails_in_one_line(tmp_path: Path) -> None:
    model = tmp_path / "digamma.tflite"
    model.write_bytes(CUSTOM_OP_TFLITE)
    line = serve_fails(str(model), "--port", str(free_port()))
    assert "model 'digamma' failed to load" in line and "custom op: Digamma" in line


def test_serve_a_text_file_named_tflite_fails_in_one_line(tmp_path: Path) -> None:
    model = tmp_path / "notes.tflite"
    model.write_text("not a model\n")
    line = serve_fails(str(model), "--port", str(free_port()))
    assert "not a TFLite model" in line and "notes" in line


def test_serve_with_a_key_that_does_not_match_its_certificate_fails_in_one_line(
    pki: Path,
) -> None:
    env = {
        "SERVEKIT_SSL_CERTFILE": str(pki / "server.pem"),
        "SERVEKIT_SSL_KEYFILE": str(pki / "client.key"),
    }
    line = serve_fails("--port", str(free_port()), env=env)
    assert "server.pem" in line and "client.key" in line and "mismatch" in line.lower()


def test_serve_with_a_missing_certificate_fails_in_one_line(pki: Path, tmp_path: Path) -> None:
    env = {
        "SERVEKIT_SSL_CERTFILE": str(tmp_path / "missing.pem"),
        "SERVEKIT_SSL_KEYFILE": str(pki / "server.key"),
    }
    line = serve_fails("--port", str(free_port()), env=env)
    assert "missing.pem" in line and "No such file" in line
    env["SERVEKIT_SSL_CA_CERTS"] = str(tmp_path / "missing-ca.pem")
    env["SERVEKIT_SSL_CERTFILE"] = str(pki / "server.pem")
    line = serve_fails("--port", str(free_port()), env=env)
    assert "missing-ca.pem" in line


def test_serve_on_a_port_in_use_fails_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = serve_fails("--port", str(port))
        assert line == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
        line = serve_fails("--port", str(free_port()), env={"SERVEKIT_GRPC_PORT": str(port)})
        assert f"gRPC cannot listen on 127.0.0.1:{port}" in line


def test_serve_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every flag of `serve` that maps to a setting: its name and its default."""
    from typer.testing import CliRunner

    from servekit import cli

    seen: dict[str, Any] = {}

    def fake_load_settings(config: Path | None, **flags: Any) -> ServerSettings:
        seen.update(flags)
        raise BadInput("stop here")

    monkeypatch.setattr(cli, "load_settings", fake_load_settings)
    args = [
        "serve",
        "--strict-readiness",
        "--no-exit-on-error",
        "--drain-timeout",
        "0.5",
        "--timeout-keep-alive",
        "620",
        "--header-timeout",
        "10",
        "--max-header-bytes",
        "32768",
        "--max-header-count",
        "50",
        "--max-url-bytes",
        "4096",
    ]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    expected = {
        "strict_readiness": True,
        "exit_on_error": False,
        "drain_timeout_s": 0.5,
        "timeout_keep_alive_s": 620.0,
        "header_timeout_s": 10.0,
        "max_header_bytes": 32768,
        "max_header_count": 50,
        "max_url_bytes": 4096,
    }
    assert {k: seen.get(k) for k in expected} == expected
    defaults = ServerSettings()
    assert (defaults.strict_readiness, defaults.exit_on_error) == (False, False)
    assert defaults.timeout_keep_alive_s == 75.0


def test_start_up_log_is_held_then_written_in_order_or_dropped() -> None:
    """What `serve` logs while starting is held: written (in order) once started or once
    start-up takes long, dropped when start-up fails quickly (the error line says it)."""
    import io
    import logging
    import time

    from servekit.cli import _StartupLog

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    first, second = logging.getLogger("h1.test.first"), logging.getLogger("h1.test.second")
    for logger in (first, second):
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        with _StartupLog() as held:
            first.info("one")
            second.info("two")
            first.info("three")
            assert out.getvalue() == ""
            held.release()
            second.info("four")
        assert out.getvalue().split() == ["one", "two", "three", "four"]
        out.truncate(0)
        out.seek(0)
        with _StartupLog():
            first.error("a failure the error line will tell")
        assert out.getvalue() == ""
        with _StartupLog(hold_s=0.05):
            first.info("slow start")
            time.sleep(0.3)
            assert out.getvalue().split() == ["slow", "start"]
    finally:
        for logger in (first, second):
            logger.removeHandler(handler)
