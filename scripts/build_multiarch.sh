#!/usr/bin/env bash
# servekit for linux/amd64 and linux/arm64 under one name (a manifest list), from
# deploy/docker/Dockerfile, without buildx: each platform is built by
# scripts/build_arm64.sh (ARCH=amd64, ARCH=arm64; arm64 under QEMU), pushed as
# NAME-amd64 and NAME-arm64, and `docker manifest` joins them. Run as root.
#
#   REGISTRY=registry.example:5000 scripts/build_multiarch.sh
#   docker pull registry.example:5000/servekit:0.1.0     # a board gets arm64, a PC amd64
#
# Variables: REGISTRY (required: host:port, or host:port/path), NAME (servekit), VERSION
# (servekit's own), EXTRAS as for build_arm64.sh. A registry on 127.0.0.1 or localhost is
# reached over plain HTTP (--insecure for `docker manifest`); any other needs TLS and a
# `docker login` first. tests/test_arm64.py runs this against Debian's docker-registry
# on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${REGISTRY:?set REGISTRY=host:port of the registry to push to}"
NAME=${NAME:-servekit}
VERSION=${VERSION:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/servekit/__init__.py)}
DOCKER=${DOCKER:-docker}
target="$REGISTRY/$NAME:$VERSION"
insecure=()
case "$REGISTRY" in
  127.* | localhost | localhost:* | "[::1]"*) insecure=(--insecure) ;;
esac

parts=()
for arch in amd64 arm64; do
  ARCH=$arch TAG="$NAME:$arch" scripts/build_arm64.sh
  "$DOCKER" tag "$NAME:$arch" "$target-$arch"
  "$DOCKER" push --quiet "$target-$arch"
  parts+=("$target-$arch")
done

"$DOCKER" manifest rm "$target" >/dev/null 2>&1 || true # a list left from an earlier run
"$DOCKER" manifest create "${insecure[@]}" "$target" "${parts[@]}"
"$DOCKER" manifest push "${insecure[@]}" "$target"
echo "build_multiarch: $target (linux/amd64, linux/arm64)"
