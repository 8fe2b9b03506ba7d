#!/usr/bin/env bash
# A PostgreSQL server on 127.0.0.1 for the tests of one Optuna study shared by several search processes:
#   .ci/postgres.sh up      initdb (first time) and start it; prints nothing else
#   .ci/postgres.sh down    stop it (its data stays in $STATE until the machine's /tmp is cleared)
# Idempotent. Where root or the server is missing it says why and exits 0: the PostgreSQL tests then skip.
# The tests reach it at postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres (tests/test_search.py).
set -euo pipefail

STATE=${CVAE_POSTGRES_STATE:-/tmp/cvae-postgres}
PORT=${CVAE_POSTGRES_PORT:-55432}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)

say() { echo "postgres: $*" >&2; }

skip_reason() {
    [[ $(id -u) == 0 ]] || { echo "not root (the server runs as the postgres user)"; return; }
    [[ -n $BIN && -x $BIN/pg_ctl ]] || { echo "no PostgreSQL server installed (Debian: apt-get install postgresql)"; return; }
    id postgres >/dev/null 2>&1 || echo "no postgres user"
}

install_server() {  # where the machine image has none: Debian's, its own cluster never started (this script starts one)
    [[ -z $BIN && $(id -u) == 0 ]] && command -v apt-get >/dev/null || return 0
    say "installing postgresql"
    local policy=/usr/sbin/policy-rc.d ours=""
    [[ -e $policy ]] || { printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    [[ -z $ours ]] || rm -f "$policy"
    BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
}

as_postgres() { runuser -u postgres -- "$@"; }

up() {
    local reason
    install_server
    reason=$(skip_reason)
    if [[ -n $reason ]]; then
        say "not started: $reason; the PostgreSQL tests will skip"
        return 0
    fi
    mkdir -p "$STATE" && chown postgres: "$STATE" && chmod 700 "$STATE"
    # trust on 127.0.0.1 and the socket in $STATE only: a throw-away server for tests, never a real one's setup
    [[ -f $STATE/data/PG_VERSION ]] || as_postgres "$BIN/initdb" -D "$STATE/data" -A trust -U postgres >/dev/null
    if ! as_postgres "$BIN/pg_ctl" -D "$STATE/data" status >/dev/null 2>&1; then
        as_postgres "$BIN/pg_ctl" -D "$STATE/data" -l "$STATE/server.log" -w \
            -o "-p $PORT -k $STATE -c listen_addresses=127.0.0.1" start >/dev/null
    fi
    say "up on 127.0.0.1:$PORT"
}

down() {
    [[ -z $(skip_reason) && -f $STATE/data/PG_VERSION ]] || return 0
    as_postgres "$BIN/pg_ctl" -D "$STATE/data" -m fast -w stop >/dev/null 2>&1 || true
    say "down"
}

case "${1:-}" in
up) up ;;
down) down ;;
*) echo "usage: $0 up|down" >&2 && exit 2 ;;
esac
