#!/usr/bin/env bash
# The run command.
#   bash scripts/run.sh                      demo: throw-away PostgreSQL + ithaca on 127.0.0.1:6432
#   bash scripts/run.sh path/to/odyssey.conf run ithaca in the foreground with that config
# Installs what it needs (PostgreSQL for the demo, .venv with the package).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup-env.sh
. scripts/setup-env.sh

if [ "$#" -ge 1 ]; then
    conf="$1"
    shift
    [ -f "$conf" ] || { log "config file not found: $conf"; exit 2; }
    ensure_venv ""
    exec .venv/bin/python -m ithaca "$conf" "$@"
fi

ensure_postgres
ensure_venv ""
exec .venv/bin/python scripts/run_demo.py
