#!/usr/bin/env bash
# Installs ftpsproxy as a systemd service from this checkout:
#   the system user and group ftpsproxy (useradd; root only, target / only),
#   /opt/ftpsproxy/venv with the package, its Twisted plugin cache made at install time
#     (the service user cannot write it, so it must be fresh before the first start),
#   /etc/ftpsproxy (0750 root:ftpsproxy) with ftpsproxy.toml and the certificate and key
#     (0640 root:ftpsproxy: the service reads them again on SIGHUP, nobody else may),
#   /etc/systemd/system/ftpsproxy.service, /etc/logrotate.d/ftpsproxy,
#   and the examples for nftables and a certbot deploy hook in /opt/ftpsproxy/share.
# It never enables or starts the service: edit /etc/ftpsproxy/ftpsproxy.toml first.
#
# Usage: deploy/install.sh [--root DIR] [--no-accounts] [--no-venv] [--package SPEC]
#                          [--python PATH] [--certificate FILE --private-key FILE]
#   --root DIR      install below DIR instead of / (DESTDIR-style: an image, a test);
#                   the venv's scripts are rewritten to run from /opt/ftpsproxy/venv
#   --no-accounts   neither create the user nor chown/chgrp (implied when not root, or
#                   when DIR is not /: the account belongs to the target system)
#   --no-venv       leave /opt/ftpsproxy/venv alone (no Python, no pip)
#   --package SPEC  what pip installs (default: this checkout), e.g. a wheel file
#   --python PATH   the interpreter the venv is made from (default: Debian's /usr/bin/python3;
#                   the venv links to it, so the service user must be able to run it --
#                   not one below /root, as pyenv's)
set -euo pipefail

SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=/
ACCOUNTS=yes
VENV_STEP=yes
PACKAGE=$SOURCE
PYTHON=/usr/bin/python3
CERTIFICATE=""
PRIVATE_KEY=""
SERVICE_USER=ftpsproxy
PREFIX=/opt/ftpsproxy
CONFIG_DIR=/etc/ftpsproxy
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
say() { printf 'install.sh: %s\n' "$*"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --root) TARGET=${2:?--root needs a directory}; shift 2 ;;
        --no-accounts) ACCOUNTS=no; shift ;;
        --no-venv) VENV_STEP=no; shift ;;
        --package) PACKAGE=${2:?--package needs a pip requirement}; shift 2 ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
        --certificate) CERTIFICATE=${2:?--certificate needs a file}; shift 2 ;;
        --private-key) PRIVATE_KEY=${2:?--private-key needs a file}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ -n $CERTIFICATE && -z $PRIVATE_KEY || -z $CERTIFICATE && -n $PRIVATE_KEY ]] &&
    die "--certificate and --private-key go together"

mkdir -p "$TARGET"
ROOT=$(cd "$TARGET" && pwd)
[[ $ROOT == / ]] && ROOT=""
# The target's path for an absolute path of the installed system.
at() { printf '%s%s' "$ROOT" "$1"; }
VENV=$PREFIX/venv

# --- the system account ------------------------------------------------------------------
if [[ $ACCOUNTS == yes && $(id -u) -ne 0 ]]; then
    say "not root: skipping useradd and chown/chgrp (files stay owned by $(id -un))"
    ACCOUNTS=no
elif [[ $ACCOUNTS == yes && -n $ROOT ]]; then
    say "target root $ROOT is not /: skipping useradd and chown/chgrp; on the target run" \
        "useradd --system --user-group --no-create-home --home-dir /nonexistent" \
        "--shell /usr/sbin/nologin $SERVICE_USER, then chgrp $SERVICE_USER $CONFIG_DIR" \
        "$CONFIG_DIR/*"
    ACCOUNTS=no
elif [[ $ACCOUNTS == no ]]; then
    say "--no-accounts: skipping useradd and chown/chgrp"
fi
if [[ $ACCOUNTS == yes ]]; then
    if getent passwd "$SERVICE_USER" >/dev/null; then
        say "user $SERVICE_USER exists"
    else
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "ftpsproxy FTP/FTPS proxy" "$SERVICE_USER"
        say "created system user and group $SERVICE_USER"
    fi
fi
# chgrp to the service group where we may; otherwise leave the group as it is.
service_group() { if [[ $ACCOUNTS == yes ]]; then chgrp "$SERVICE_USER" "$@"; fi; }

# --- the virtual environment ---------------------------------------------------------------
if [[ $VENV_STEP == yes ]]; then
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null &&
        [[ $PYTHON == /usr/bin/python3 && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing python3 and python3-venv on this machine (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3 python3-venv
    fi
    [[ -x $PYTHON ]] || die "no $PYTHON (Debian: apt-get install python3 python3-venv)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "need Python >= 3.11, $PYTHON is $("$PYTHON" --version 2>&1)"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
        die "$PYTHON cannot make a venv (Debian: apt-get install python3-venv)"
    install -d -m 0755 "$(at "$PREFIX")"
    if [[ ! -x $(at "$VENV")/bin/python ]]; then
        say "creating $(at "$VENV") with $PYTHON ($("$PYTHON" --version))"
        "$PYTHON" -m venv "$(at "$VENV")"
    fi
    say "pip install $PACKAGE"
    pip_log=$(mktemp)
    if ! "$(at "$VENV")/bin/python" -m pip install --quiet --upgrade "$PACKAGE" >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        rm -f "$pip_log"
        die "pip install failed"
    fi
    rm -f "$pip_log"
    # Twisted writes twisted/plugins/dropin.cache when it finds it stale; the service user
    # cannot, so each start would rescan (and log that it cannot write). Make it now.
    "$(at "$VENV")/bin/python" - <<'PY' || die "the ftpsproxy twistd plugin is not found in the venv"
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins

list(getPlugins(IPlugin))
names = [maker.tapname for maker in getPlugins(IServiceMaker)]
sys.exit("ftpsproxy" not in names)
PY
    say "Twisted plugin cache regenerated: twistd ftpsproxy is found"
    if [[ -n $ROOT ]]; then
        # The venv was made at its path below the target root; its scripts must name the
        # path they will run from.
        grep -rlF --null "$(at "$VENV")" "$(at "$VENV")/bin" |
            xargs -0 --no-run-if-empty sed -i "s|$(at "$VENV")|$VENV|g"
        say "venv scripts rewritten to run from $VENV"
    fi
    chmod -R u+rwX,go+rX,go-w "$(at "$PREFIX")"
fi

# --- configuration, certificate, key ------------------------------------------------------
install -d -m 0750 "$(at "$CONFIG_DIR")"
service_group "$(at "$CONFIG_DIR")"
if [[ -e $(at "$CONFIG_DIR/ftpsproxy.toml") ]]; then
    say "keeping $(at "$CONFIG_DIR/ftpsproxy.toml"); the current example is ftpsproxy.toml.example"
    install -m 0640 "$SOURCE/deploy/ftpsproxy.toml" "$(at "$CONFIG_DIR/ftpsproxy.toml.example")"
else
    install -m 0640 "$SOURCE/deploy/ftpsproxy.toml" "$(at "$CONFIG_DIR/ftpsproxy.toml")"
    say "installed $(at "$CONFIG_DIR/ftpsproxy.toml"): set backend and public-address"
fi
service_group "$(at "$CONFIG_DIR")"/ftpsproxy.toml*
if [[ -n $CERTIFICATE ]]; then
    install -m 0644 "$CERTIFICATE" "$(at "$CONFIG_DIR/cert.pem")"
    install -m 0640 "$PRIVATE_KEY" "$(at "$CONFIG_DIR/key.pem")"
    say "installed $(at "$CONFIG_DIR/cert.pem") and key.pem"
fi
if [[ -e $(at "$CONFIG_DIR/key.pem") ]]; then
    chmod 0640 "$(at "$CONFIG_DIR/key.pem")"
    service_group "$(at "$CONFIG_DIR/key.pem")"
else
    say "no $CONFIG_DIR/key.pem yet: install -m 0640 -g $SERVICE_USER KEY $CONFIG_DIR/key.pem"
fi

# --- systemd, logrotate, examples -----------------------------------------------------------
install -d -m 0755 "$(at /etc/systemd/system)" "$(at /etc/logrotate.d)" \
    "$(at "$PREFIX")" "$(at "$PREFIX/share")" "$(at "$PREFIX/share/nftables")" \
    "$(at "$PREFIX/share/certbot")"
install -m 0644 "$SOURCE/deploy/ftpsproxy.service" "$(at /etc/systemd/system/ftpsproxy.service)"
install -m 0644 "$SOURCE/deploy/logrotate/ftpsproxy" "$(at /etc/logrotate.d/ftpsproxy)"
install -m 0644 "$SOURCE/deploy/nftables/ftpsproxy.nft" "$(at "$PREFIX/share/nftables/ftpsproxy.nft")"
install -m 0755 "$SOURCE/deploy/certbot/ftpsproxy-reload.sh" \
    "$(at "$PREFIX/share/certbot/ftpsproxy-reload.sh")"
if [[ -z $ROOT && -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi

if [[ $ACCOUNTS == yes && $VENV_STEP == yes ]]; then
    # What the service will do first: find the plugin as the service user.
    runuser -u "$SERVICE_USER" -- "$VENV/bin/twistd" ftpsproxy --version
fi
say "done. Next: edit $CONFIG_DIR/ftpsproxy.toml, then systemctl enable --now ftpsproxy;" \
    "firewall: $PREFIX/share/nftables/ftpsproxy.nft; certbot: $PREFIX/share/certbot/ftpsproxy-reload.sh"
