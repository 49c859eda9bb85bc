#!/usr/bin/env bash
# The project's one test command: installs whatever is missing (system tools, .venv with
# the dependencies and the "test" extra), then ruff, mypy and pytest.
# Works from a clean clone on a fresh Debian 12 machine; extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# System packages the tests drive. Add FTP servers here (vsftpd, proftpd-core, ...).
APT_PACKAGES="curl lftp openssl"
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
step "python environment"
bash deploy/setup-venv.sh test
VENV_PY="$ROOT/.venv/bin/python"

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
