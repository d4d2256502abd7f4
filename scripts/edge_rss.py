#!/usr/bin/env python3
"""Resident memory of the serving image with one model, as docs/edge.md reports it.

    scripts/edge_rss.py servekit:arm64                      # the bundled demo model
    scripts/edge_rss.py servekit:arm64 --models benchmarks/build/models/mobilenet_v2

Runs the image with configs/edge.yaml on a free port of the host network (the model
folder, if given, mounted as /models/<its name>), waits until ready, sends V2 binary
requests of 1 and max_batch_size rows (random inputs of the model's shape), then prints
PID 1's VmRSS and VmHWM (peak) from /proc as JSON and stops the container. An image of
another CPU runs under QEMU (as a Raspberry Pi 4's CPU, scripts/base_image.py): PID 1 is
then the emulator, and its RSS includes QEMU's own memory and translated code, so it is
an upper bound of what the board uses.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import base_image  # scripts/base_image.py
import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / "configs" / "edge.yaml"
DTYPES = {"FP32": np.float32, "UINT8": np.uint8, "INT8": np.int8, "INT32": np.int32}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        sys.exit(f"docker {' '.join(args)}: {done.stderr}")
    return done.stdout


def status_mb(name: str) -> dict[str, float]:
    lines = docker("exec", name, "cat", "/proc/1/status").splitlines()
    kb = {line.split(":")[0]: int(line.split()[1]) for line in lines if line.endswith("kB")}
    return {"rss_mb": round(kb["VmRSS"] / 1024, 1), "peak_mb": round(kb["VmHWM"] / 1024, 1)}


def v2_binary(url: str, model: str, name: str, datatype: str, x: np.ndarray) -> httpx.Response:
    """One V2 inference with the input as raw bytes (binary tensor extension): 8
    MobileNetV2 images are 4.8 MB so, where JSON would be over 20 MB."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(x.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    return httpx.post(
        f"{url}/v2/models/{model}/infer",
        content=header + x.tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
        timeout=600,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--models", type=Path, help="a <model>/<version>/ folder")
    parser.add_argument("--requests", type=int, default=5, help="per batch size")
    parser.add_argument("--ready-timeout", type=float, default=900)
    args = parser.parse_args()

    port, name = free_port(), f"servekit-rss-{uuid.uuid4().hex[:8]}"
    edge = EDGE
    mounts = []
    if args.models:
        mounts += ["--volume", f"{args.models.resolve()}:/models/{args.models.name}:ro"]
    env = {"SERVEKIT_HOST": "127.0.0.1", "SERVEKIT_PORT": str(port)}
    env |= {"SERVEKIT_GRPC_PORT": "0", "SERVEKIT_TFS_GRPC_PORT": "0"}
    arch = docker("image", "inspect", "--format", "{{.Architecture}}", args.image).strip()
    if arch != base_image.NATIVE:  # under QEMU: a Raspberry Pi 4's CPU and /proc/cpuinfo
        tmp = Path(tempfile.mkdtemp(prefix="edge-rss-"))
        (tmp / "cpuinfo").write_text(base_image.BOARD_CPUINFO)
        mounts += ["--volume", f"{tmp / 'cpuinfo'}:/proc/cpuinfo:ro"]
        env |= base_image.BOARD_ENV
        # Emulated, a batch of 8 MobileNetV2 images takes longer than the profile's 10 s
        # deadline; the deadline does not change the memory.
        profile = yaml.safe_load(EDGE.read_text())
        profile["default_model_config"]["timeout_ms"] = 600_000
        edge = tmp / "edge.yaml"
        edge.write_text(yaml.safe_dump(profile))
        for f in (tmp, tmp / "cpuinfo", edge):
            f.chmod(0o755 if f.is_dir() else 0o644)
    mounts += ["--volume", f"{edge}:/etc/servekit/edge.yaml:ro"]
    env_args = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
    started = time.monotonic()
    config = ("--config", "/etc/servekit/edge.yaml")
    docker(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        *mounts,
        *env_args,
        args.image,
        *config,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > args.ready_timeout:
                sys.exit(f"not ready:\n{docker('logs', name)}")
            time.sleep(1)
        ready_s = time.monotonic() - started
        loaded = status_mb(name)
        (model,) = httpx.get(f"{url}/v1/models", timeout=30).json()
        meta = httpx.get(f"{url}/v2/models/{model['name']}", timeout=30).json()
        (inp,) = meta["inputs"]
        batch = yaml.safe_load(EDGE.read_text())["default_model_config"]["max_batch_size"]
        rng = np.random.default_rng(0)
        for rows in (1, batch):
            shape = [rows, *inp["shape"][1:]]
            x = rng.random(shape).astype(DTYPES[inp["datatype"]])
            for _ in range(args.requests):
                r = v2_binary(url, model["name"], inp["name"], inp["datatype"], x)
                r.raise_for_status()
        served = status_mb(name)
        print(
            json.dumps(
                {
                    "image": args.image,
                    "arch": arch,
                    "model": model["name"],
                    "ready_s": round(ready_s),
                    "loaded": loaded,
                    "after_requests": served,
                    "batch_rows": batch,
                }
            )
        )
    finally:
        subprocess.run(["docker", "stop", "--time", "30", name], capture_output=True, timeout=90)
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, timeout=60)


if __name__ == "__main__":
    main()
