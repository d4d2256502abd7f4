"""Vendor Swagger UI and ReDoc into src/servekit/server/static (run by hand to upgrade).

The docs pages must work offline, so their JavaScript ships inside the servekit package
instead of coming from a CDN. This script is the only way those files change:

    python scripts/vendor_docs_assets.py          # needs npm and the npm registry

It downloads each pinned npm package with `npm pack`, checks the tarball against the
pinned sha512 integrity (the registry's own `dist.integrity`), copies the few files
served plus the licence files, applies the patches listed below (each must match exactly
once), and writes static/SOURCES.json: package, version, licence, integrity, patches and
the sha256 of every file. tests/test_browser.py checks the files against SOURCES.json.

To upgrade: change a version, set its integrity to the value `npm view PKG@VERSION
dist.integrity` prints, run the script, then run tests/test_browser.py (it fails on any
request leaving 127.0.0.1, so a new external URL in an upgrade shows up there).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "src" / "servekit" / "server" / "static"


@dataclass(frozen=True)
class Patch:
    file: str
    old: str
    new: str
    why: str


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str
    license: str
    folder: str  # under static/
    files: tuple[str, ...]  # paths inside the tarball's package/ folder
    patches: tuple[Patch, ...] = field(default=())


PACKAGES = (
    Package(
        name="swagger-ui-dist",
        version="5.35.0",
        integrity="sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==",
        license="Apache-2.0",
        folder="swagger-ui",
        files=(
            "swagger-ui-bundle.js",
            "swagger-ui-bundle.js.LICENSE.txt",
            "swagger-ui.css",
            "favicon-32x32.png",
            "LICENSE",
            "NOTICE",
        ),
    ),
    Package(
        name="redoc",
        version="2.5.4",
        integrity="sha512-M6jWhG1qoBnH6TFmzJnstyCZ87HmOY/UzDm78mHiYihEdlV/YcS9ogOo1NlElnJMeLsyxHFe2yFc4sNjHTrABQ==",
        license="MIT",
        folder="redoc",
        files=(
            "bundles/redoc.standalone.js",
            "bundles/redoc.standalone.js.LICENSE.txt",
            "LICENSE",
        ),
        patches=(
            Patch(
                file="redoc.standalone.js",
                old='src:"https://cdn.redoc.ly/redoc/logo-mini.svg"',
                new='src:"data:,"',
                why="The sidebar footer loads Redocly's logo from cdn.redoc.ly on every page "
                "view. 'data:,' is not an image: the component's onError hides the logo, "
                "as it does offline, and no request leaves the machine.",
            ),
        ),
    ),
)


def sri_sha512(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def npm_pack(spec: str, dest: Path) -> Path:
    out = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(dest)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    filename: str = json.loads(out)[0]["filename"]
    return dest / filename


def vendor(pkg: Package, work: Path) -> dict[str, Any]:
    tarball = npm_pack(f"{pkg.name}@{pkg.version}", work)
    got = sri_sha512(tarball)
    if got != pkg.integrity:
        sys.exit(f"{tarball.name}: integrity {got}, pinned {pkg.integrity}")
    unpacked = work / pkg.name
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="data")
    target = STATIC / pkg.folder
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in pkg.files:
        shutil.copyfile(unpacked / "package" / name, target / Path(name).name)
    for patch in pkg.patches:
        path = target / patch.file
        text = path.read_text(encoding="utf-8")
        if text.count(patch.old) != 1:
            sys.exit(f"{pkg.name}: patch for {patch.file} matches {text.count(patch.old)} times")
        path.write_text(text.replace(patch.old, patch.new), encoding="utf-8")
    return {
        "package": pkg.name,
        "version": pkg.version,
        "license": pkg.license,
        "integrity": pkg.integrity,
        "source": f"npm: {pkg.name}@{pkg.version}",
        "patches": [
            {"file": p.file, "old": p.old, "new": p.new, "why": p.why} for p in pkg.patches
        ],
        "files": {f"{pkg.folder}/{Path(n).name}": sha256(target / Path(n).name) for n in pkg.files},
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sources = [vendor(pkg, Path(tmp)) for pkg in PACKAGES]
    (STATIC / "SOURCES.json").write_text(json.dumps(sources, indent=2) + "\n", encoding="utf-8")
    for s in sources:
        print(f"{s['package']}@{s['version']} ({s['license']}): {len(s['files'])} files")


if __name__ == "__main__":
    main()
