#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for tests and benchmarks, in a directory of its own.
#
#   scripts/postgres.sh start DIR [durable]   initdb in DIR (created), start it on 127.0.0.1 and a
#                                             free port; prints the URL of database `postgres`.
#                                             Without `durable`, fsync is off (tests never crash
#                                             the machine, only hookd and PostgreSQL itself).
#   scripts/postgres.sh restart DIR SECONDS   fast shutdown, SECONDS down, start again (same port).
#   scripts/postgres.sh stop DIR              stop it (fast shutdown) and remove DIR.
#
# Installs Debian's `postgresql` when its binaries are missing. initdb refuses to run as root,
# so the server runs as the `postgres` user. Nothing listens beyond 127.0.0.1.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?start|stop}
dir=${2:?directory}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
    if [ ! -x "$PG_BIN/initdb" ]; then
        echo "installing PostgreSQL (Debian package postgresql)" >&2
        apt-get update >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >/dev/null
    fi
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    as_postgres "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    durability="-c fsync=off -c synchronous_commit=on -c full_page_writes=off"
    if [ "${3:-}" = durable ]; then durability=""; fi
    echo "-h 127.0.0.1 -p $port -k $dir -c max_connections=400 -c shared_buffers=256MB $durability" >"$dir/opts"
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o "$(cat "$dir/opts")" \
        >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "$port" >"$dir/port"
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
restart)
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    sleep "${3:?seconds down}"
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o "$(cat "$dir/opts")" \
        >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    ;;
stop)
    if [ -d "$dir/data" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|restart|stop DIR" >&2
    exit 2
    ;;
esac
