#!/usr/bin/env bash
# servekit's image for an arm64 board (Raspberry Pi 4/5 class), built on an x86-64 machine
# from deploy/docker/Dockerfile, the amd64 image's own Dockerfile, under QEMU user
# emulation (docs/edge.md). Run as root from anywhere; a Docker engine must answer.
#
#   scripts/build_arm64.sh                          # servekit:arm64 (ONNX Runtime in it)
#   EXTRAS= TAG=servekit:edge scripts/build_arm64.sh  # TFLite only: smaller
#   ARCH=amd64 TAG=servekit:amd64 scripts/build_arm64.sh  # the same steps for x86-64
#   docker save servekit:arm64 | gzip > servekit-arm64.tar.gz   # then, on the board:
#   gunzip -c servekit-arm64.tar.gz | docker load
#
# Variables: ARCH (arm64), TAG (servekit:$ARCH), EXTRAS (the Dockerfile's default, onnx),
# BASE_IMAGE (default: a Debian bookworm base with python3 made here by
# scripts/base_image.py, kept as servekit-base:bookworm-py311-$ARCH), PIP_INDEX_URL and
# PIP_EXTRA_INDEX_URL (passed on to the build).
#
# On a machine that can pull python:3.11-slim-bookworm and has docker buildx with a
# BuildKit builder, the same Dockerfile builds both platforms in one command (not run
# here: Debian 12 has no buildx package and no registry is reachable):
#   docker buildx build --platform linux/amd64,linux/arm64 -f deploy/docker/Dockerfile .
#
# Here the engine's classic builder runs each RUN step of the arm64 stages through QEMU
# (binfmt_misc), which this script sets up when missing (qemu-user-static). First build
# about 6 minutes on 2 busy cores, the base about 3 more; a rebuild after a source change
# reuses the dependency layer (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${ARCH:-arm64}
TAG=${TAG:-servekit:$ARCH}
BASE_IMAGE=${BASE_IMAGE:-servekit-base:bookworm-py311-$ARCH}
DOCKER=${DOCKER:-docker}

if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "build_arm64: making the base image $BASE_IMAGE (debootstrap --arch $ARCH)" >&2
  python3 scripts/base_image.py --arch "$ARCH" --tag "$BASE_IMAGE" --docker "$DOCKER"
else
  # The base exists; QEMU must still be registered for the RUN steps.
  python3 -c "import sys; sys.path.insert(0, 'scripts'); import base_image; \
base_image.ensure_emulation('$ARCH')"
fi

args=(--network host --file deploy/docker/Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE")
[ -n "${EXTRAS+set}" ] && args+=(--build-arg "EXTRAS=$EXTRAS")
[ -n "${PIP_INDEX_URL:-}" ] && args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL")

# The classic builder: it takes the platform of a local base image as it is (BuildKit
# would look for the host's platform of it in a registry).
before=$("$DOCKER" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
DOCKER_BUILDKIT=0 "$DOCKER" build "${args[@]}" --tag "$TAG" .
after=$("$DOCKER" image inspect --format '{{.Id}}' "$TAG")
if [ -n "$before" ] && [ "$before" != "$after" ]; then
  "$DOCKER" rmi "$before" >/dev/null 2>&1 || true # the previous build, now untagged
fi

platform=$("$DOCKER" image inspect --format '{{.Os}}/{{.Architecture}}' "$TAG")
if [ "$platform" != "linux/$ARCH" ]; then
  echo "build_arm64: $TAG is $platform, not linux/$ARCH" >&2
  exit 1
fi
size=$("$DOCKER" image inspect --format '{{.Size}}' "$TAG")
echo "build_arm64: $TAG ($platform), $((size / 1000000)) MB"
