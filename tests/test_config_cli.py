"""Settings precedence, model configs, and the CLI's contract (one-line errors)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, ROOT
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
