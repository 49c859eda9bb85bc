#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs the project's dependencies plus the given
# extras from pyproject.toml -- without installing the project itself, which runs from
# the checkout with PYTHONPATH (an editable install would hide the twistd plugin).
# Usage: bash deploy/setup-venv.sh [EXTRA ...]     e.g. test, demo
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV="$ROOT/.venv"
VENV_PY="$VENV/bin/python"
DEPS_STAMP="$VENV/.ftpsproxy-deps"
EXTRAS="$*"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

die() { printf 'setup-venv: %s\n' "$*" >&2; exit 1; }
apt_install() {
    [[ $(id -u) -eq 0 ]] || die "need root to install $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

find_python() {
    local py
    for py in python3 python3.13 python3.12 python3.11; do
        if command -v "$py" >/dev/null && py_ok "$py"; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

echo "python environment: $VENV (extras: ${EXTRAS:-none})"
if [[ -e $VENV ]] && ! py_ok "$VENV_PY"; then
    echo "$VENV is unusable or older than Python 3.11: recreating it"
    rm -rf "$VENV"
fi
if [[ ! -e $VENV ]]; then
    # A minimal Debian 12 has no Python at all: as root, install it (and venv) first.
    if ! find_python >/dev/null && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt_install python3 python3-venv
    fi
    PY=$(find_python) ||
        die "need Python >= 3.11 (python3) on PATH; Debian: apt-get install python3 python3-venv"
    # Debian splits venv/ensurepip into python3-venv.
    if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null && command -v dpkg-query >/dev/null; then
        apt_install python3-venv
    fi
    echo "creating $VENV with $PY ($("$PY" --version))"
    if ! "$PY" -m venv "$VENV"; then
        rm -rf "$VENV"
        die "could not create $VENV with $PY"
    fi
fi

# [project].dependencies + the requested extras, without the project itself.
DEPS=$("$VENV_PY" - "$@" <<'PY'
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
deps = list(project.get("dependencies", []))
for extra in sys.argv[1:]:
    deps += project.get("optional-dependencies", {})[extra]
print("\n".join(dict.fromkeys(deps)))
PY
)
mapfile -t DEP_LIST <<<"$DEPS"
WANT_STAMP=$( { "$VENV_PY" --version; printf '%s\n' "$DEPS"; } | sha256sum | cut -d' ' -f1)
if [[ ! -f $DEPS_STAMP || $(cat "$DEPS_STAMP") != "$WANT_STAMP" ]]; then
    echo "pip install: ${DEP_LIST[*]}"
    pip_log=$(mktemp)
    if ! "$VENV_PY" -m pip install --quiet "${DEP_LIST[@]}" >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        rm -f "$pip_log"
        die "pip install failed"
    fi
    rm -f "$pip_log"
    echo "$WANT_STAMP" >"$DEPS_STAMP"
else
    echo "dependencies unchanged since last install"
fi

