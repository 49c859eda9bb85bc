#!/usr/bin/env bash
# The project's one test command: installs whatever is missing (system tools, .venv with
# the dependencies and the "test" extra), then ruff, mypy and pytest.
# Works from a clean clone on a fresh Debian 12 machine; extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# System packages the tests drive. Add FTP servers here (vsftpd, proftpd-core, ...).
APT_PACKAGES="curl lftp openssl"
VENV="$ROOT/.venv"
VENV_PY="$VENV/bin/python"
DEPS_STAMP="$VENV/.ftpsproxy-test-deps"
SECONDS=0

step() { printf '\n=== %s (t=%ss)\n' "$*" "$SECONDS"; }
die() { printf 'tests/run.sh: %s\n' "$*" >&2; exit 1; }

if [[ -v CI ]]; then export CI; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# --- system packages ----------------------------------------------------------------
APT_UPDATED=no
apt_install() {
    # Install the given Debian packages (root only); apt-get update at most once.
    if [[ $(id -u) -ne 0 ]]; then
        echo "not root: cannot install $*; tests that need them will skip (or fail under CI)"
        return 0
    fi
    if [[ $APT_UPDATED == no ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=yes
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

deb_missing() {
    # Print those of the given packages that are not installed.
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            printf '%s ' "$pkg"
        fi
    done
}

step "system packages: $APT_PACKAGES"
if command -v dpkg-query >/dev/null; then
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    missing=$(deb_missing $APT_PACKAGES)
    if [[ -n $missing ]]; then
        echo "installing: $missing"
        # shellcheck disable=SC2086
        apt_install $missing
    else
        echo "all installed"
    fi
else
    echo "no dpkg: not installing anything; tests that need missing tools will skip"
fi

# --- python virtual environment -------------------------------------------------------
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

step "python environment: $VENV"
if [[ -e $VENV ]] && ! py_ok "$VENV_PY"; then
    echo "$VENV is unusable or older than Python 3.11: recreating it"
    rm -rf "$VENV"
fi
if [[ ! -e $VENV ]]; then
    PY=$(find_python) || die "need Python >= 3.11 (python3) on PATH"
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

# [project].dependencies + [project.optional-dependencies].test, without the project itself.
DEPS=$("$VENV_PY" - <<'PY'
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
deps = project.get("dependencies", []) + project.get("optional-dependencies", {}).get("test", [])
print("\n".join(deps))
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

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# --- static checks --------------------------------------------------------------------
step "ruff check"
"$VENV_PY" -m ruff check .
step "ruff format --check"
"$VENV_PY" -m ruff format --check .

step "mypy"
if find ftpsproxy -name '*.py' -print -quit 2>/dev/null | grep -q .; then
    "$VENV_PY" -m mypy
else
    echo "skipped: ftpsproxy/ has no Python files yet"
fi

# --- tests ------------------------------------------------------------------------------
step "pytest"
rc=0
"$VENV_PY" -m pytest -q "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "pytest collected no tests: that is a failure" >&2
    rc=1
fi
step "done: exit $rc"
exit "$rc"
