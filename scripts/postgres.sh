#!/usr/bin/env bash
# Runs a real PostgreSQL server from Debian's postgresql package in a
# private data directory, without Docker and without touching the system's
# own clusters.
#
#   scripts/postgres.sh start|stop|status|logs [N]|dsn
#
# start creates the cluster on first use, with a database and a
# password-protected role both named eventrouter, and prints nothing but
# progress; dsn prints the connection string.
#
# Environment:
#   POSTGRES_PORT       port on 127.0.0.1 (default: the one this state
#                       directory used before, else the first free one
#                       from 55432)
#   POSTGRES_STATE_DIR  data, logs and the chosen port
#                       (default /tmp/eventrouter-postgres)
#   POSTGRES_BIN        directory of initdb, pg_ctl and postgres (default:
#                       the newest /usr/lib/postgresql/*/bin)
set -euo pipefail

state=${POSTGRES_STATE_DIR:-/tmp/eventrouter-postgres}
data="$state/data"
logfile="$state/postgres.log"
portfile="$state/port"
password=eventrouter

die() { echo "postgres.sh: $*" >&2; exit 1; }

bin=${POSTGRES_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

port() {
  if [[ -n ${POSTGRES_PORT:-} ]]; then
    echo "$POSTGRES_PORT"
  elif [[ -f $portfile ]]; then
    cat "$portfile"
  else
    local p=55432
    while port_open "$p"; do p=$((p + 1)); done
    echo "$p"
  fi
}

# as_owner runs a server program as the cluster's owner: PostgreSQL
# refuses to run as root, so root runs it as the package's postgres user.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

running() {
  [[ -f "$data/postmaster.pid" ]] && as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

init() {
  [[ -x $bin/initdb ]] || die "PostgreSQL is not installed: apt-get install postgresql (or set POSTGRES_BIN)"
  [[ -f "$data/PG_VERSION" ]] && return
  echo "postgres.sh: creating a cluster in $data" >&2
  rm -rf "$data"
  mkdir -p "$data"
  if [[ $(id -u) -eq 0 ]]; then chown -R postgres: "$state"; fi
  local pwfile="$state/pwfile"
  echo "$password" >"$pwfile"
  if [[ $(id -u) -eq 0 ]]; then chown postgres: "$pwfile"; fi
  as_owner "$bin/initdb" -D "$data" -U eventrouter --pwfile="$pwfile" -A scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$state/initdb.log" 2>&1 \
    || { cat "$state/initdb.log" >&2; die "initdb failed"; }
  rm -f "$pwfile"
}

start() {
  if running; then
    echo "postgres.sh: PostgreSQL already running on 127.0.0.1:$(port)"
    return
  fi
  mkdir -p "$state"
  init
  local p
  p=$(port)
  port_open "$p" && die "127.0.0.1:$p is taken by another process; stop it or set POSTGRES_PORT"
  echo "$p" >"$portfile"
  : >"$logfile"
  if [[ $(id -u) -eq 0 ]]; then chown -R postgres: "$state"; fi
  # The socket goes to the state directory: /var/run/postgresql belongs
  # to the system's clusters.
  as_owner "$bin/pg_ctl" -D "$data" -l "$logfile" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $p -k $state -c max_connections=200 -c fsync=on" start >/dev/null \
    || { tail -n 40 "$logfile" >&2; die "PostgreSQL did not start"; }
  if ! PGPASSWORD=$password "$bin/psql" -h 127.0.0.1 -p "$p" -U eventrouter -d postgres -tAq \
    -c "SELECT 1 FROM pg_database WHERE datname = 'eventrouter'" | grep -q 1; then
    PGPASSWORD=$password "$bin/createdb" -h 127.0.0.1 -p "$p" -U eventrouter eventrouter
  fi
  echo "postgres.sh: PostgreSQL $(cat "$data/PG_VERSION") running on 127.0.0.1:$p (state $state)"
}

stop() {
  if ! running; then
    echo "postgres.sh: PostgreSQL is not running"
    return
  fi
  # fast: roll back open transactions and disconnect clients, as a
  # database going away mid-stream does.
  as_owner "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
  echo "postgres.sh: PostgreSQL stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if running; then echo "running on 127.0.0.1:$(port)"; else echo "stopped"; exit 3; fi ;;
  logs) tail -n "${2:-100}" "$logfile" ;;
  dsn) echo "postgres://eventrouter:$password@127.0.0.1:$(port)/eventrouter?sslmode=disable" ;;
  *) echo "usage: $0 start|stop|status|logs [N]|dsn" >&2; exit 2 ;;
esac
