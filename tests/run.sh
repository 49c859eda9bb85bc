#!/usr/bin/env bash
# The project's one test command: installs whatever is missing (system tools, .venv with
# the dependencies and the "test" extra), then ruff, mypy and pytest.
# Works from a clean clone on a fresh Debian 12 machine; extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# System packages the tests drive (the FTP servers have their own step below):
# rclone (Go) and Apache Commons Net (Java) are clients of tests/test_interop_clients.py,
# which also needs javac: a JDK only where there is none. tests/test_deploy.py checks the
# service kit with the tools that read it: systemd (systemd-analyze verify; no daemon is
# started), nftables (nft -c; its service stays disabled), logrotate and shellcheck.
# tests/test_container.py builds and runs the image with podman, on runc (crun refuses
# hybrid cgroup layouts) and a Debian base bootstrapped by mmdebstrap (no registry here).
APT_PACKAGES="curl lftp openssl rclone libcommons-net-java systemd nftables logrotate shellcheck"
APT_PACKAGES+=" podman runc mmdebstrap"
if ! command -v javac >/dev/null; then APT_PACKAGES+=" default-jdk-headless"; fi
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

# --- FTP servers as test backends -----------------------------------------------------
# proftpd-core, vsftpd and pure-ftpd all conflict (Conflicts: ftp-server): ProFTPD is
# installed normally; vsftpd and pure-ftpd are unpacked from their .debs into .servers/
# (git-ignored), where tests/support/servers.py finds them, plus their runtime libraries.
# No daemon is left running: tests start and stop their own servers on loopback ports.
SERVERS_DIR="$ROOT/.servers"
PROFTPD_PACKAGES="proftpd-core proftpd-mod-crypto proftpd-mod-proxy"
SERVER_LIB_PACKAGES="libwrap0 libsodium23 libcap2 libpam0g libpam-modules libssl3 libcrypt1"
UNPACKED_SERVERS="vsftpd pure-ftpd"

port21_in_use() {
    # Something accepts connections on 127.0.0.1:21 (a system FTP daemon).
    timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/21' 2>/dev/null
}

install_quietly() {
    # Install packages without letting apt start their daemons (ProFTPD on port 21,
    # Prometheus on 9090). Where the machine has no policy-rc.d we add one for the
    # install only; should ProFTPD start anyway (port 21 was free before), we stop and
    # disable the service we caused to start.
    local was_running=no made_policy=no
    if port21_in_use; then was_running=yes; fi
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# tests/run.sh: no daemons while installing test servers\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        made_policy=yes
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local rc=0
    apt_install "$@" || rc=$?
    if [[ $made_policy == yes ]]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    [[ $rc -eq 0 ]] || die "apt-get install $* failed"
    if [[ $was_running == no ]] && port21_in_use; then
        echo "stopping the proftpd service the install started"
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now proftpd.service || true
        elif [[ -x /etc/init.d/proftpd ]]; then
            /etc/init.d/proftpd stop || true
        fi
    fi
}

unpack_server() {
    # apt-get download + dpkg-deb -x PKG into .servers/PKG; .servers/PKG/.version marks it.
    local pkg=$1 dest="$SERVERS_DIR/$1" tmp deb
    tmp=$(mktemp -d)
    # apt downloads as the _apt user when it may write here (otherwise it warns).
    chmod 0755 "$tmp"
    if id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
    (cd "$tmp" && apt-get download -qq "$pkg") || { rm -rf "$tmp"; die "apt-get download $pkg failed"; }
    deb=$(find "$tmp" -maxdepth 1 -name "${pkg}_*.deb" -print -quit)
    [[ -n $deb ]] || { rm -rf "$tmp"; die "apt-get download $pkg gave no .deb"; }
    rm -rf "$dest"
    mkdir -p "$dest"
    dpkg-deb -x "$deb" "$dest"
    dpkg-deb -f "$deb" Version >"$dest/.version"
    rm -rf "$tmp"
    echo "unpacked $pkg $(cat "$dest/.version") into ${dest#"$ROOT"/}"
}

server_binaries() {
    printf '%s\n' "$SERVERS_DIR/vsftpd/usr/sbin/vsftpd" "$SERVERS_DIR/pure-ftpd/usr/sbin/pure-ftpd" \
        "$SERVERS_DIR/pure-ftpd/usr/bin/pure-pw" /usr/sbin/proftpd
}

step "FTP servers: proftpd (apt), $UNPACKED_SERVERS (unpacked into .servers/)"
if [[ $(id -u) -ne 0 ]] || ! command -v dpkg-query >/dev/null; then
    echo "not root or no dpkg: not installing FTP servers; their tests skip (or fail under CI)"
else
    # shellcheck disable=SC2086
    missing=$(deb_missing $SERVER_LIB_PACKAGES)
    if [[ -n $missing ]]; then
        echo "installing: $missing"
        # shellcheck disable=SC2086
        apt_install $missing
    fi
    # shellcheck disable=SC2086
    missing=$(deb_missing $PROFTPD_PACKAGES)
    if [[ -n $missing ]]; then
        echo "installing: $missing"
        # shellcheck disable=SC2086
        install_quietly $missing
    fi
    for pkg in $UNPACKED_SERVERS; do
        if [[ ! -s $SERVERS_DIR/$pkg/.version || ! -x $SERVERS_DIR/$pkg/usr/sbin/$pkg ]]; then
            if [[ $APT_UPDATED == no ]]; then
                DEBIAN_FRONTEND=noninteractive apt-get update -qq
                APT_UPDATED=yes
            fi
            unpack_server "$pkg"
        fi
    done
    # vsftpd authenticates local users through PAM service "vsftpd" only.
    if [[ ! -e /etc/pam.d/vsftpd ]]; then
        install -m 0644 "$SERVERS_DIR/vsftpd/etc/pam.d/vsftpd" /etc/pam.d/vsftpd
        echo "installed /etc/pam.d/vsftpd from the vsftpd package"
    fi
    unresolved=""
    while read -r bin; do
        [[ -x $bin ]] || die "missing $bin after install"
        if ldd "$bin" | grep -q 'not found'; then
            unresolved+="$bin: $(ldd "$bin" | grep 'not found' | tr -s ' \t\n' ' ')"$'\n'
        fi
    done < <(server_binaries)
    [[ -z $unresolved ]] || die "FTP server binaries miss libraries:"$'\n'"$unresolved"
    echo "ready: proftpd $(dpkg-query -W -f='${Version}' proftpd-core)," \
        "vsftpd $(cat "$SERVERS_DIR/vsftpd/.version"), pure-ftpd $(cat "$SERVERS_DIR/pure-ftpd/.version")"
fi

step "fail2ban-regex (Debian package fail2ban; its daemon is not started)"
if command -v fail2ban-regex >/dev/null; then
    echo "installed: $(fail2ban-regex --version 2>&1 | head -1)"
elif [[ $(id -u) -eq 0 ]] && command -v dpkg-query >/dev/null; then
    install_quietly fail2ban
else
    echo "not root or no dpkg: the fail2ban kit's test skips (or fails under CI)"
fi

step "promtool (Debian package prometheus; its daemon is not started)"
if command -v promtool >/dev/null; then
    echo "installed: $(promtool --version 2>&1 | head -1)"
elif [[ $(id -u) -eq 0 ]] && command -v dpkg-query >/dev/null; then
    install_quietly prometheus
else
    echo "not root or no dpkg: promtool tests skip (or fail under CI)"
fi

step "haproxy (Debian package; its daemon is not started)"
# tests/test_scaleout_netns.py runs it in network namespaces in front of two instances;
# tests/test_e2e_proxy_out.py as a PROXY protocol receiver in front of a backend.
if command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]]; then
    haproxy_bin=$(command -v haproxy || echo /usr/sbin/haproxy)
    echo "installed: $("$haproxy_bin" -v | head -1)"
elif [[ $(id -u) -eq 0 ]] && command -v dpkg-query >/dev/null; then
    install_quietly haproxy
else
    echo "not root or no dpkg: the haproxy tests skip (or fail under CI)"
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
"$VENV_PY" -m mypy

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
