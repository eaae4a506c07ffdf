#!/usr/bin/env bash
# Sourced by scripts/test.sh, scripts/run.sh and bench/run.sh (from the repo root).
# Makes sure PostgreSQL server binaries exist and .venv holds the package.
#   ensure_postgres        install Debian's postgresql if initdb is missing (root only)
#   ensure_venv [EXTRAS]   create .venv (python >= 3.11) and pip install -e ".[EXTRAS]"
#   ensure_apt_package PKG install a Debian package if missing (root only), else return 1

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

apt_updated=0
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq </dev/null
        apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

have_pg_server() {
    command -v initdb >/dev/null 2>&1 && return 0
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return 0
    return 1
}

ensure_postgres() {
    if have_pg_server && command -v psql >/dev/null 2>&1 && command -v pgbench >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        log "PostgreSQL server binaries (initdb, pg_ctl, psql, pgbench) not found."
        log "Install them, e.g.: sudo apt-get install -y postgresql postgresql-contrib"
        return 1
    fi
    log "installing PostgreSQL (apt-get install postgresql postgresql-contrib)"
    apt_install postgresql postgresql-contrib
    have_pg_server || { log "initdb still not found after installing postgresql"; return 1; }
}

ensure_apt_package() {  # $1 = package, $2 = command it provides
    command -v "$2" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" != 0 ]; then
        log "'$2' not found and not root: cannot apt-get install $1"
        return 1
    fi
    log "installing $1"
    apt_install "$1" || return 1
    command -v "$2" >/dev/null 2>&1
}

find_python() {
    local py
    for py in python3.13 python3.12 python3.11 python3; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

ensure_venv() {  # $1 = extras, e.g. "test" (optional)
    local extras="${1:-}" spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    if [ ! -x .venv/bin/python ] ||
        ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
        local py
        if ! py="$(find_python)"; then
            if [ "$(id -u)" = 0 ]; then
                apt_install python3 python3-venv
                py="$(find_python)" || { log "need Python >= 3.11"; return 1; }
            else
                log "need Python >= 3.11 (python3.11 or newer on PATH)"
                return 1
            fi
        fi
        log "creating .venv with $py"
        rm -rf .venv
        if ! "$py" -m venv .venv 2>/dev/null; then
            if [ "$(id -u)" = 0 ]; then
                apt_install python3-venv
                "$py" -m venv .venv
            else
                log "'$py -m venv' failed; install python3-venv"
                return 1
            fi
        fi
    fi
    # Reinstall only when pyproject.toml changed since the last install.
    local stamp=".venv/.ithaca-installed-$extras"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! .venv/bin/python -c 'import ithaca' 2>/dev/null; then
        log "pip install -e '$spec'"
        .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip </dev/null
        .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec" </dev/null
        touch "$stamp"
    fi
}
