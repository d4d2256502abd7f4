"""Put an optimized model into a servekit model repository as its next version."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from servekit.config import ModelConfig
from servekit.optimize.common import OptimizeError
from servekit.repository import CONFIG_FILE, check_name
from servekit.runtime import TFLITE

REPORT_FILE = "report.json"
CONFIG_HEADER = (
    "# servekit model config, written by `servekit optimize`. Every key is optional;\n"
    "# see ModelConfig in servekit/config.py for all of them.\n"
)


def model_dir(out: Path) -> Path:
    """Check ``REPO/NAME`` and return it (the NAME folder need not exist yet)."""
    try:
        check_name(out.name)
    except Exception as e:
        raise OptimizeError(f"--out {out}: {e}") from None
    if out.exists() and not out.is_dir():
        raise OptimizeError(f"--out {out} is a file; expected REPO/NAME (a folder)")
    if out.parent.exists() and not out.parent.is_dir():
        raise OptimizeError(f"--out {out}: {out.parent} is not a folder")
    return out


def next_version(folder: Path) -> int:
    """One more than the highest numbered version folder (1 for a new model)."""
    if not folder.is_dir():
        return 1
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def default_config() -> str:
    values = {
        "max_batch_size": 32,
        "max_queue_delay_ms": 0.0,
        "instances": 1,
        "threads_per_instance": 1,
        "version_policy": "latest",
    }
    ModelConfig.model_validate(values)  # what we write must load
    return CONFIG_HEADER + yaml.safe_dump(values, sort_keys=False)


def publish(folder: Path, content: bytes, report: dict[str, Any]) -> tuple[Path, bool]:
    """Write ``<folder>/<n+1>/model.tflite`` and ``report.json``; add config.yaml if absent.

    The version folder is filled under a temporary name and renamed into place, so a
    server polling the repository never sees half a version. Returns the version folder
    and whether config.yaml was written.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".optimize-", dir=folder))
    except OSError as e:
        raise OptimizeError(f"cannot write to {folder}: {e.strerror or e}") from None
    try:
        (tmp / TFLITE.model_file).write_bytes(content)
        for _ in range(100):  # another writer may take a number first
            version = next_version(folder)
            target = folder / str(version)
            report["version"] = version
            report["path"] = str(target / TFLITE.model_file)
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            tmp.chmod(0o755)
            try:
                os.rename(tmp, target)
                break
            except OSError:
                if target.exists():
                    continue
                raise
        else:
            raise OptimizeError(f"cannot find a free version number in {folder}")
        config = folder / CONFIG_FILE
        wrote_config = not config.exists()
        if wrote_config:
            config.write_text(default_config(), encoding="utf-8")
    except OSError as e:
        raise OptimizeError(f"cannot write to {folder}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, wrote_config
