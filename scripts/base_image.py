#!/usr/bin/env python3
"""A Debian bookworm base image for deploy/docker/Dockerfile, made here with debootstrap
and loaded into Docker, for any CPU that Debian and QEMU know (amd64, arm64).

    sudo scripts/base_image.py --arch arm64 --tag servekit-base:bookworm-py311-arm64

For a machine that cannot pull python:3.11-slim-bookworm (no registry): Debian's own
python3 (3.11) with its venv module and CA certificates, minbase, trimmed as a slim image
is. A foreign CPU's packages are configured under QEMU user emulation (qemu-user-static
and binfmt_misc, set up here when missing; about 3 minutes for arm64 on 2 cores).

The image is written in `docker save`'s format with its platform in its config and
loaded with `docker load`: `docker import --platform` is ignored by an engine without
experimental features, and an arm64 file system labelled amd64 would make a board's
Docker warn and pick the wrong image from a multi-platform list. The host's CA bundle
goes in, so pip and uv in a build trust what the host trusts.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Debian's name of the CPU -> QEMU's binfmt entry for it.
QEMU_BINFMT = {"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}
NATIVE = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
# Running an arm64 image or tree here: QEMU as a Raspberry Pi 4's CPU (Cortex-A72: NEON,
# no SVE), and the /proc/cpuinfo such a board shows. QEMU shows the x86-64 host's
# /proc/cpuinfo to the arm64 program, and the CPU detection of both runtimes (XNNPACK's
# when ai-edge-litert makes an interpreter, ONNX Runtime's at import) crashes reading it;
# with this file mounted over it both run.
BOARD_ENV = {"QEMU_CPU": "cortex-a72"}
BOARD_CPUINFO = (
    "".join(
        f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        "CPU part\t: 0xd08\nCPU revision\t: 3\n\n"
        for n in range(4)
    )
    + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n"
)
TRIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env,
        check=True,
    )


def ensure_emulation(arch: str) -> None:
    """QEMU registered with binfmt_misc for arch (F flag: usable inside chroots and
    containers without copying QEMU in)."""
    if arch == NATIVE:
        return
    entry = Path("/proc/sys/fs/binfmt_misc") / QEMU_BINFMT[arch]
    if entry.is_file() and entry.read_text().startswith("enabled"):
        return
    if not shutil.which("update-binfmts") or not list(Path("/usr/libexec/qemu-binfmt").glob("*")):
        apt_install("qemu-user-static", "binfmt-support")
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], check=True
        )
    subprocess.run(["update-binfmts", "--enable", QEMU_BINFMT[arch]], check=False)
    if not (entry.is_file() and entry.read_text().startswith("enabled")):
        sys.exit(f"{entry} is not enabled: {arch} binaries cannot run here")


def debian_mirror() -> str:
    """The mirror this machine's apt uses for bookworm."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for block in sources.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in block.splitlines() if ":" in line and line[0] != "#"
            )
            if "bookworm" in fields.get("Suites", "").split() and fields.get("URIs", "").strip():
                return fields["URIs"].split()[0]
    return "http://deb.debian.org/debian"


def make_rootfs(arch: str, rootfs: Path, mirror: str) -> None:
    if not shutil.which("debootstrap"):
        apt_install("debootstrap")
    ensure_emulation(arch)
    subprocess.run(
        [
            "debootstrap",
            f"--arch={arch}",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
            mirror,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_ca.is_file():
        shutil.copy(host_ca, rootfs / "etc/ssl/certs/ca-certificates.crt")
        pip_conf = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
        (rootfs / "etc/pip.conf").write_text(pip_conf)
    for trim in TRIM:
        for p in (rootfs / trim).glob("*"):
            if p.is_file() or p.is_symlink():
                p.unlink()
            else:
                shutil.rmtree(p)


def python_tree(arch: str, tree: Path, mirror: str) -> None:
    """Debian's python3 for arch unpacked into tree, its packages not configured: enough
    to run that CPU's Python in a chroot under QEMU, in a minute instead of the three of
    a configured system (debootstrap --foreign fetches and unpacks; no emulated step)."""
    if not shutil.which("debootstrap"):
        apt_install("debootstrap")
    ensure_emulation(arch)
    subprocess.run(
        [
            "debootstrap",
            "--foreign",
            f"--arch={arch}",
            "--variant=minbase",
            "--include=python3,python3-venv",
            "bookworm",
            str(tree),
            mirror,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    archives = tree / "var/cache/apt/archives"
    for deb in sorted(archives.glob("*.deb")):
        subprocess.run(["dpkg-deb", "--extract", str(deb), str(tree)], check=True)
        deb.unlink()


def docker_archive(rootfs: Path, arch: str, tag: str, out: Path) -> None:
    """`docker save`'s format: one layer (the file system), a config naming the platform."""
    layer = out.parent / "layer.tar"
    tar = ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(layer), "."]
    subprocess.run(tar, check=True)
    digest = hashlib.sha256()
    with layer.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Env": [f"PATH={PATH}", "LANG=C.UTF-8"], "Cmd": ["python3"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest.hexdigest()}"]},
        "history": [{"created_by": f"scripts/base_image.py --arch {arch} (debootstrap bookworm)"}],
    }
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]
    with tarfile.open(out, "w") as tar:
        for name, data in ((config_name, config_bytes), ("manifest.json", json.dumps(manifest))):
            raw = data if isinstance(data, bytes) else data.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        tar.add(layer, "layer/layer.tar")
    layer.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=NATIVE, choices=sorted(QEMU_BINFMT))
    parser.add_argument("--tag", help="default servekit-base:bookworm-py311-ARCH")
    parser.add_argument("--mirror", default=None, help="Debian mirror (default: apt's)")
    parser.add_argument("--docker", default=shutil.which("docker") or "docker")
    args = parser.parse_args()
    tag = args.tag or f"servekit-base:bookworm-py311-{args.arch}"
    with tempfile.TemporaryDirectory(prefix="servekit-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        make_rootfs(args.arch, rootfs, args.mirror or debian_mirror())
        archive = Path(tmp) / "image.tar"
        docker_archive(rootfs, args.arch, tag, archive)
        with archive.open("rb") as f:
            subprocess.run([args.docker, "load", "--quiet"], stdin=f, check=True)
    print(tag)


if __name__ == "__main__":
    main()
