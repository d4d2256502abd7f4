#!/usr/bin/env bash
# Installs Triton's load tool perf_analyzer, unmodified, and prints the path of a wrapper
# that runs it:
#
#   scripts/get_perf_analyzer.sh         # into .tools/perf_analyzer
#   scripts/get_perf_analyzer.sh DIR     # into DIR
#   "$(scripts/get_perf_analyzer.sh)" -m digits -u 127.0.0.1:8000 ...
#
# The binary comes from PyPI's perf-analyzer wheel (pinned below, sha256 checked). It is
# linked against glibc 2.38 and Debian 12 has 2.36, so it runs with Debian 13 (trixie)'s
# own loader and libraries, unpacked into DIR/sysroot from the .debs (no chroot, no
# container: paths given to perf_analyzer, like -f out.csv, mean the same as outside).
# The .debs are fetched by apt with a private configuration in DIR/apt (its own sources
# list, lists and cache); the machine's apt sources and state are not touched and no
# root is needed. The mirror is the machine's Debian mirror (DEBIAN_MIRROR overrides).
#
# Idempotent: a finished install leaves DIR/.installed; a later call that finds it, with
# the same pins and a wrapper that still answers --version, only prints the path.
# Installs started together take turns on DIR/.lock. Needs python3 (with pip, or venv),
# apt-get, dpkg-deb, flock and sha256sum: all on a Debian 12 machine set up by .ci/run.
set -euo pipefail
DIR=${1:-}
[ -z "$DIR" ] || [[ $DIR == /* ]] || DIR=$PWD/$DIR
cd "$(dirname "$0")/.."
DIR=${DIR:-$PWD/.tools/perf_analyzer}

PA_VERSION=2.60.0
PA_WHEEL=perf_analyzer-$PA_VERSION-py3-none-manylinux_2_38_x86_64.whl
PA_SHA256=23ef56b107ae9233e5cf09fbdf508dd9b936a52f1bae2f63f53c8117087b3f25
SUITE=trixie
# What the binary and its libraries link against (readelf -d, NEEDED): libc6 (libc, libm,
# the loader), libstdc++6, libgcc-s1, libssl3t64 (libssl, libcrypto), zlib1g and libzstd1
# (libcrypto needs both).
PACKAGES=(libc6 libstdc++6 libgcc-s1 libssl3t64 zlib1g libzstd1)
STAMP="perf-analyzer $PA_VERSION sha256:$PA_SHA256 debian:$SUITE ${PACKAGES[*]}"

die() {
  echo "get_perf_analyzer: $*" >&2
  exit 1
}

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] ||
  die "perf-analyzer $PA_VERSION ships a Linux x86-64 binary only (this is $(uname -s) $(uname -m))"

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WRAPPER=$DIR/perf_analyzer
# It replaces DIR/bin, DIR/sysroot and the like: only in a folder of its own.
if [ ! -e "$DIR/.lock" ] && [ -n "$(ls -A "$DIR")" ]; then
  die "$DIR is neither empty nor an earlier perf_analyzer install; give an empty folder"
fi

exec 9>"$DIR/.lock"
flock 9

installed() {
  [ -f "$DIR/.installed" ] && [ "$(cat "$DIR/.installed")" = "$STAMP" ] || return 1
  local version
  version=$("$WRAPPER" --version 2>&1) || return 1  # it prints to stderr
  [[ $version == "Perf Analyzer Version"* ]]
}
if installed; then
  echo "$WRAPPER"
  exit 0
fi
rm -f "$DIR/.installed"

# --- the wheel ----------------------------------------------------------------------------
# pip from the project's tool venv (scripts/install.sh makes it), python3's own, or a
# throwaway venv (python3-venv brings pip along).
find_pip_python() {
  local py
  for py in "${TOOLS:-.tools}/bin/python" "${PYTHON:-python3}"; do
    if "$py" -m pip --version >/dev/null 2>&1; then
      echo "$py"
      return
    fi
  done
  "${PYTHON:-python3}" -m venv "$DIR/pip-venv" >&2 || die "no pip: install python3-venv"
  echo "$DIR/pip-venv/bin/python"
}

wheel=$DIR/wheel/$PA_WHEEL
if [ ! -f "$wheel" ] || [ "$(sha256sum "$wheel" | cut -d' ' -f1)" != "$PA_SHA256" ]; then
  rm -rf "$DIR/wheel"
  py=$(find_pip_python)
  echo "get_perf_analyzer: downloading perf-analyzer==$PA_VERSION (manylinux_2_38_x86_64)" >&2
  "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_38_x86_64 -d "$DIR/wheel" "perf-analyzer==$PA_VERSION" >&2 ||
    die "pip download perf-analyzer==$PA_VERSION failed"
  [ -f "$wheel" ] || die "pip download did not give $PA_WHEEL: $(ls "$DIR/wheel")"
  got=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [ "$got" != "$PA_SHA256" ]; then
    rm -f "$wheel"
    die "$PA_WHEEL has sha256 $got, expected $PA_SHA256 (a changed upload or a bad mirror); refusing it"
  fi
fi
rm -rf "$DIR/bin"
mkdir -p "$DIR/bin"
"${PYTHON:-python3}" - "$wheel" "$DIR/bin/perf_analyzer" <<'EOF'
import shutil, sys, zipfile

with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("perf_analyzer/bin/perf_analyzer") as src:
    with open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
chmod 755 "$DIR/bin/perf_analyzer"

# --- Debian 13's loader and libraries -----------------------------------------------------
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "${DEBIAN_MIRROR%/}"
    return
  fi
  # The machine's own mirror: the first .../debian URI of its sources (one-line or deb822).
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources 2>/dev/null | sed 's/#.*//' |
    grep -oE 'https?://[^] ]+/debian/?([[:space:]]|$)' | head -n1 | tr -d '[:space:]' || true)
  uri=${uri%/}
  echo "${uri:-http://deb.debian.org/debian}"
}

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || die "$KEYRING missing (package debian-archive-keyring)"
mirror=$(debian_mirror)
apt_dir=$DIR/apt
rm -rf "$apt_dir" "$DIR/sysroot"
mkdir -p "$apt_dir"/{lists/partial,cache/archives/partial,sources.list.d,preferences.d,debs}
: >"$apt_dir/status"
echo "deb [arch=amd64 signed-by=$KEYRING] $mirror $SUITE main" >"$apt_dir/sources.list"
# Read after the machine's configuration (apt-get -c), so proxies and the like still
# apply, but every place apt reads or writes state is this folder, and the machine's
# update hooks (appstream, packagekit) do not run.
cat >"$apt_dir/apt.conf" <<EOF
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
Dir::Etc::sourcelist "$apt_dir/sources.list";
Dir::Etc::sourceparts "$apt_dir/sources.list.d";
Dir::Etc::preferences "$apt_dir/preferences";
Dir::Etc::preferencesparts "$apt_dir/preferences.d";
Dir::State::Lists "$apt_dir/lists";
Dir::State::status "$apt_dir/status";
Dir::Cache "$apt_dir/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Default-Release "";
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
EOF
apt_get() { apt-get -c "$apt_dir/apt.conf" -q "$@"; }

echo "get_perf_analyzer: fetching Debian $SUITE's ${PACKAGES[*]} from $mirror" >&2
apt_get update >"$apt_dir/update.log" 2>&1 ||
  die "apt-get update of $mirror $SUITE failed (set DEBIAN_MIRROR?):
$(cat "$apt_dir/update.log")"
(cd "$apt_dir/debs" && apt_get download "${PACKAGES[@]}") >"$apt_dir/download.log" 2>&1 ||
  die "apt-get download ${PACKAGES[*]} failed:
$(cat "$apt_dir/download.log")"
for deb in "$apt_dir"/debs/*.deb; do
  dpkg-deb -x "$deb" "$DIR/sysroot"
  dpkg-deb --show --showformat='${Package} ${Version}\n' "$deb"
done >"$DIR/sysroot.versions"

lib=$DIR/sysroot/usr/lib/x86_64-linux-gnu
cat >"$WRAPPER" <<'EOF'
#!/bin/sh
# Made by scripts/get_perf_analyzer.sh: runs the unmodified perf_analyzer binary with the
# Debian 13 loader and libraries next to it; every argument is passed through.
here=$(dirname "$(readlink -f "$0")")
lib=$here/sysroot/usr/lib/x86_64-linux-gnu
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib:$here/sysroot/lib/x86_64-linux-gnu" \
  --argv0 "$0" "$here/bin/perf_analyzer" "$@"
EOF
chmod 755 "$WRAPPER"

# Every library must resolve inside the sysroot (none from the machine's /lib).
resolved=$("$lib/ld-linux-x86-64.so.2" --list --library-path "$lib" "$DIR/bin/perf_analyzer") ||
  die "the loader cannot link perf_analyzer:
$resolved"
outside=$(echo "$resolved" | grep '=>' | grep -v "=> $DIR/sysroot/" || true)
[ -z "$outside" ] || die "libraries resolved outside $DIR/sysroot (add their packages):
$outside"
version=$("$WRAPPER" --version 2>&1) || die "$WRAPPER --version failed: $version"
[[ $version == "Perf Analyzer Version"* ]] || die "unexpected --version output: $version"

rm -rf "$apt_dir" "$DIR/pip-venv"
echo "$STAMP" >"$DIR/.installed"
echo "get_perf_analyzer: $version (perf-analyzer $PA_VERSION) in $DIR" >&2
echo "$WRAPPER"
