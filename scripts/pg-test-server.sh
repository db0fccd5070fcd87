#!/usr/bin/env bash
# A throw-away PostgreSQL for the store tests.
#
#   scripts/pg-test-server.sh start DIR   initdb into DIR, start postgres on 127.0.0.1 (a free
#                                         port, unix socket inside DIR, fsync on), create the
#                                         database cpns_test, print its libpq URL on stdout
#   scripts/pg-test-server.sh stop DIR    stop that server (fast) and remove DIR
#
# As root the server runs as the `postgres` OS user (PostgreSQL refuses to run as root); as
# any other user, as that user. Installs nothing: scripts/deps.sh installs postgresql.
# Authentication is `trust`, reachable from this host only; never use this for real data.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR | stop DIR" >&2
  exit 2
}
[[ $# -eq 2 ]] || usage
action=$1
dir=$(realpath -m -- "$2")
marker="$dir/.cpns-pg-test-server"
data="$dir/data"
sock="$dir/sock"
cd /  # the postgres user may not be able to enter the caller's working directory

pg_bin() {
  local found
  found=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  if [[ -z "$found" || ! -x "$found/pg_ctl" ]]; then
    echo "pg-test-server: no PostgreSQL under /usr/lib/postgresql/*/bin (run scripts/deps.sh)" >&2
    exit 1
  fi
  echo "$found"
}

# Runs a command as the server's OS user.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  local bin port url attempt
  bin=$(pg_bin)
  if [[ -e "$data" ]]; then
    echo "pg-test-server: $data exists already" >&2
    exit 1
  fi
  mkdir -p "$dir"
  touch "$marker"
  mkdir -p "$sock"
  if [[ $(id -u) -eq 0 ]]; then
    if ! id -u postgres >/dev/null 2>&1; then
      echo "pg-test-server: no 'postgres' OS user (install postgresql: scripts/deps.sh)" >&2
      exit 1
    fi
    chown postgres: "$dir" "$sock"
    chmod 700 "$dir"
    if ! runuser -u postgres -- test -w "$dir"; then
      echo "pg-test-server: user postgres cannot write to $dir (is a parent directory private?)" >&2
      exit 1
    fi
  fi

  as_pg "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
    echo "pg-test-server: initdb failed:" >&2
    cat "$dir/initdb.log" >&2
    exit 1
  }

  # A free port: pick one at random and let the server try it; another process may take it
  # between our check and the bind, so a failed start is retried with another port.
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 40000))
    if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
      continue
    fi
    if as_pg "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$sock -c fsync=on -c synchronous_commit=on -c full_page_writes=on -c max_connections=100" \
      start >&2; then
      break
    fi
    port=""
    # pg_ctl may have left a half-started server behind on a timeout.
    as_pg "$bin/pg_ctl" -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    echo "pg-test-server: start attempt $attempt failed; server log:" >&2
    tail -n 5 "$dir/server.log" >&2 || true
  done
  if [[ -z "${port:-}" ]]; then
    echo "pg-test-server: could not start PostgreSQL" >&2
    exit 1
  fi

  as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres cpns_test >&2
  url="postgresql://postgres@127.0.0.1:$port/cpns_test"
  echo "$url"
}

stop() {
  local bin pid
  if [[ ! -e "$dir" ]]; then
    return 0
  fi
  if [[ ! -e "$marker" ]]; then
    echo "pg-test-server: $dir was not made by this script; not touching it" >&2
    exit 1
  fi
  if [[ -f "$data/postmaster.pid" ]]; then
    bin=$(pg_bin)
    if ! as_pg "$bin/pg_ctl" -D "$data" -m fast -w -t 30 stop >&2; then
      pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)
      if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        echo "pg-test-server: fast stop failed; killing postmaster $pid" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
  fi
  rm -rf -- "$dir"
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
