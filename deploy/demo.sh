#!/usr/bin/env bash
# Runs the demo on a fresh machine: sets up .venv (dependencies + pyftpdlib), then starts
# an embedded pyftpdlib backend and ftpsproxy in front of it with a self-signed
# certificate, on loopback. Prints the curl/lftp command lines to try; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash deploy/setup-venv.sh demo
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python -m ftpsproxy.ops.demo "$@"
