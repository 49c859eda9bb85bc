#!/usr/bin/env bash
# Builds the ftpsproxy container image with podman, offline: the project and its
# dependencies become wheels on this host (pip wheel), copied into the build context and
# installed in the image without an index.
#
# The base image: $BASE if given; else the official python:3.11-slim-bookworm if podman
# already has it; else a Debian 12 base bootstrapped here with mmdebstrap and imported as
# localhost/ftpsproxy-base:bookworm (no image registry needed).
#
# Usage: bash deploy/container/build.sh [TAG]          (default localhost/ftpsproxy:latest)
# Environment:
#   BASE             base image to build on (skips the lookup above)
#   FTPSPROXY_CACHE  the base rootfs and dependency wheels, kept between builds
#                    (default /var/tmp/ftpsproxy-container-cache)
#   PYTHON           the Python that builds the wheels (default: .venv/bin/python, else
#                    python3); its minor version must be the image's (3.11)
#   PODMAN_OPTS      global podman options (default here: runc and cgroupfs when
#                    /usr/sbin/runc exists: crun refuses hybrid cgroup layouts)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
TAG=${1:-localhost/ftpsproxy:latest}
CACHE=${FTPSPROXY_CACHE:-/var/tmp/ftpsproxy-container-cache}
OFFICIAL_BASE=docker.io/library/python:3.11-slim-bookworm
LOCAL_BASE=localhost/ftpsproxy-base:bookworm
SUITE=bookworm
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
if [[ -z ${PODMAN_OPTS+set} ]]; then
    PODMAN_OPTS=""
    if [[ -x /usr/sbin/runc ]]; then PODMAN_OPTS="--runtime /usr/sbin/runc --cgroup-manager=cgroupfs"; fi
fi
# Explicit limits: without them runc fails on setrlimit here.
LIMITS=(--ulimit nofile=16384:16384 --ulimit nproc=4096:4096)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
SECONDS=0

die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }
step() { printf '=== %s (t=%ss)\n' "$*" "$SECONDS"; }
pip_quiet() {
    # pip with its output kept back unless it fails (index warnings are noise here).
    local log rc=0
    log=$(mktemp)
    "$PYTHON" -m pip --quiet "$@" >"$log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then cat "$log" >&2; fi
    rm -f "$log"
    return "$rc"
}
# shellcheck disable=SC2086 # PODMAN_OPTS is a list of options
pm() { podman $PODMAN_OPTS "$@"; }

command -v podman >/dev/null || die "podman not found (Debian: apt-get install podman runc)"
mkdir -p "$CACHE"

# --- base image -----------------------------------------------------------------------
if [[ -n ${BASE:-} ]]; then
    step "base: $BASE (given)"
elif pm image exists "$OFFICIAL_BASE"; then
    BASE=$OFFICIAL_BASE
    step "base: $BASE"
else
    BASE=$LOCAL_BASE
    if ! pm image exists "$BASE"; then
        rootfs="$CACHE/rootfs-$SUITE.tar"
        if [[ ! -s $rootfs ]]; then
            command -v mmdebstrap >/dev/null ||
                die "no $OFFICIAL_BASE and no mmdebstrap to bootstrap a base (apt-get install mmdebstrap)"
            step "bootstrapping $SUITE with mmdebstrap into $rootfs"
            # The name must end in .tar: mmdebstrap picks its output format from it.
            rm -rf "$CACHE/partial-$SUITE.tar"
            mmdebstrap --quiet --variant=minbase --include=python3,python3-venv \
                "$SUITE" "$CACHE/partial-$SUITE.tar"
            mv "$CACHE/partial-$SUITE.tar" "$rootfs"
        fi
        step "importing $rootfs as $BASE"
        pm import --quiet --change 'CMD ["/bin/bash"]' "$rootfs" "$BASE" >/dev/null
    fi
    step "base: $BASE (local, from mmdebstrap)"
fi

# --- wheels ---------------------------------------------------------------------------
image_py=$(pm run --rm --network=none "${LIMITS[@]}" "$BASE" python3 -c \
    'import sys; print("%d.%d" % sys.version_info[:2])') || die "cannot run python3 in $BASE"
host_py=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ $image_py == "$host_py" ]] ||
    die "$BASE has Python $image_py but $PYTHON is $host_py: compiled wheels would not fit (set PYTHON)"

CONTEXT=$(mktemp -d)
trap 'rm -rf "$CONTEXT"' EXIT
mkdir "$CONTEXT/wheels"

# Dependencies: rebuilt only when the requirement list or the Python changes.
DEPS=$("$PYTHON" -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))')
stamp=$( { "$PYTHON" --version; printf '%s\n' "$DEPS"; } | sha256sum | cut -d' ' -f1)
deps_dir="$CACHE/wheels-$stamp"
if [[ ! -d $deps_dir ]]; then
    step "pip wheel: dependencies into $deps_dir"
    mapfile -t dep_list <<<"$DEPS"
    pip_quiet wheel --wheel-dir "$deps_dir.tmp" "${dep_list[@]}"
    mv "$deps_dir.tmp" "$deps_dir"
fi
cp "$deps_dir"/*.whl "$CONTEXT/wheels/"
step "pip wheel: ftpsproxy"
# Built from a copy of what the wheel holds: a build in the checkout would leave build/ and
# *.egg-info there.
mkdir "$CONTEXT/src"
tar -C "$ROOT" --exclude=__pycache__ --exclude=dropin.cache -cf - \
    pyproject.toml README.md ftpsproxy twisted/plugins/ftpsproxy_plugin.py |
    tar -C "$CONTEXT/src" -xf -
pip_quiet wheel --no-deps --wheel-dir "$CONTEXT/wheels" "$CONTEXT/src"

# --- image ----------------------------------------------------------------------------
step "podman build $TAG"
cp deploy/container/Containerfile "$CONTEXT/Containerfile"
# docker format: the OCI image format has no HEALTHCHECK.
pm build --quiet --format docker --network=none "${LIMITS[@]}" \
    --build-arg "BASE=$BASE" --tag "$TAG" --file "$CONTEXT/Containerfile" "$CONTEXT" >/dev/null
step "built $TAG on $BASE"
