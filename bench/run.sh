#!/usr/bin/env bash
# One command for the benchmark: ensures PostgreSQL, pgbouncer and .venv, then runs
# bench/run.py with the given arguments (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup-env.sh
. scripts/setup-env.sh
ensure_postgres
ensure_venv ""
args=("$@")
if ! ensure_apt_package pgbouncer pgbouncer && [ ! -x /usr/sbin/pgbouncer ]; then
    log "PgBouncer unavailable: skipping the pgbouncer target"
    has_targets=0
    for a in "${args[@]}"; do [[ "$a" == --targets* ]] && has_targets=1; done
    [ "$has_targets" = 0 ] && args+=(--targets direct,ithaca)
fi
exec .venv/bin/python bench/run.py "${args[@]}"
