#!/usr/bin/env bash
# The test command: installs what it needs (PostgreSQL, .venv), lints, runs pytest.
#   bash scripts/test.sh [extra pytest args...]
# Works unattended (CI=true, no stdin). Exit code is pytest's; "no tests ran" fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup-env.sh
. scripts/setup-env.sh

ensure_postgres
ensure_venv test

log "ruff check ithaca tests bench scripts"
if ! .venv/bin/python -m ruff check ithaca tests bench scripts; then
    echo "FAILED: ruff found lint errors" >&2
    exit 1
fi

log "pytest"
set +e
.venv/bin/python -m pytest -n 2 -p xdist --timeout 120 tests "$@" </dev/null
rc=$?
set -e
case "$rc" in
    0) echo "scripts/test.sh: OK: all tests passed" ;;
    5) echo "scripts/test.sh: FAILED: pytest collected no tests (exit code 5)" >&2; exit 5 ;;
    *) echo "scripts/test.sh: FAILED: pytest exit code $rc" >&2 ;;
esac
exit "$rc"
