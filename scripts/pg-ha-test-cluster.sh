#!/usr/bin/env bash
# A throw-away PostgreSQL primary with a synchronous streaming standby, for the failover test.
#
#   scripts/pg-ha-test-cluster.sh start DIR         initdb a primary into DIR/primary, start it on
#                                                   127.0.0.1 (a free port), clone it with
#                                                   pg_basebackup -R into DIR/standby, start the
#                                                   standby (another free port), wait until it is
#                                                   the synchronous standby, create the database
#                                                   cpns_test; print one line:
#                                                   "PRIMARY_PORT STANDBY_PORT"
#   scripts/pg-ha-test-cluster.sh kill-primary DIR  SIGKILL the primary's postmaster and every
#                                                   process it started (a crashed machine)
#   scripts/pg-ha-test-cluster.sh promote DIR       promote the standby (waits until it accepts
#                                                   writes)
#   scripts/pg-ha-test-cluster.sh stop DIR          stop both (what is left) and remove DIR
#
# The primary runs with synchronous_standby_names='*' and synchronous_commit=on (given on its
# command line, so that the standby, once promoted, does not wait for a standby of its own):
# a COMMIT returns only once the standby has the commit record on disk. As root the servers run
# as the `postgres` OS user, like scripts/pg-test-server.sh. Authentication is `trust`,
# reachable from this host only; never use this for real data.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR | kill-primary DIR | promote DIR | stop DIR" >&2
  exit 2
}
[[ $# -eq 2 ]] || usage
action=$1
dir=$(realpath -m -- "$2")
marker="$dir/.cpns-pg-ha-test-cluster"
cd /

# Seconds to wait for the standby to become synchronous, and for a promotion.
SYNC_WAIT_S=60
PROMOTE_WAIT_S=60

pg_bin() {
  local found
  found=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  if [[ -z "$found" || ! -x "$found/pg_ctl" ]]; then
    echo "pg-ha-test-cluster: no PostgreSQL under /usr/lib/postgresql/*/bin (run scripts/deps.sh)" >&2
    exit 1
  fi
  echo "$found"
}

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if ! ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
      echo "$port"
      return 0
    fi
  done
  echo "pg-ha-test-cluster: no free port" >&2
  exit 1
}

# Attempts at starting a node, each on a fresh port: another process may take the port between
# free_port's check and the server's bind (tests run in parallel), so a failed start is retried.
START_ATTEMPTS=5

# start_node NAME EXTRA_OPTIONS: start the node on a free port and print that port. After each
# failed attempt the node's log is printed, so a failure in CI says why.
start_node() {
  local name=$1 extra=$2 bin port attempt
  bin=$(pg_bin)
  mkdir -p "$dir/$name.sock"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$dir/$name.sock"
  for attempt in $(seq 1 $START_ATTEMPTS); do
    port=$(free_port)
    if as_pg "$bin/pg_ctl" -D "$dir/$name" -l "$dir/$name.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir/$name.sock -c fsync=on -c full_page_writes=on -c max_connections=100 -c wal_level=replica -c max_wal_senders=5 -c hot_standby=on $extra" \
      start >&2; then
      echo "$port"
      return 0
    fi
    echo "pg-ha-test-cluster: $name did not start on port $port (attempt $attempt of $START_ATTEMPTS); its log:" >&2
    tail -n 15 "$dir/$name.log" >&2 || true
  done
  exit 1
}

psql_at() {  # psql_at PORT SQL...
  local port=$1
  shift
  as_pg "$(pg_bin)/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "$*"
}

start() {
  local bin pport sport sync
  bin=$(pg_bin)
  if [[ -e "$dir/primary" ]]; then
    echo "pg-ha-test-cluster: $dir/primary exists already" >&2
    exit 1
  fi
  mkdir -p "$dir"
  touch "$marker"
  if [[ $(id -u) -eq 0 ]]; then
    id -u postgres >/dev/null 2>&1 || {
      echo "pg-ha-test-cluster: no 'postgres' OS user (install postgresql: scripts/deps.sh)" >&2
      exit 1
    }
    chown postgres: "$dir"
    chmod 700 "$dir"
  fi
  as_pg "$bin/initdb" -D "$dir/primary" -U postgres -A trust -E UTF8 --locale=C \
    >"$dir/initdb.log" 2>&1 || {
    echo "pg-ha-test-cluster: initdb failed:" >&2
    cat "$dir/initdb.log" >&2
    exit 1
  }
  pport=$(start_node primary "-c synchronous_commit=on -c synchronous_standby_names=*")
  echo "$pport" >"$dir/primary.port"

  as_pg "$bin/pg_basebackup" -h 127.0.0.1 -p "$pport" -U postgres -D "$dir/standby" -R \
    -X stream -c fast >"$dir/basebackup.log" 2>&1 || {
    echo "pg-ha-test-cluster: pg_basebackup failed:" >&2
    cat "$dir/basebackup.log" >&2
    exit 1
  }
  sport=$(start_node standby "-c synchronous_commit=on")
  echo "$sport" >"$dir/standby.port"

  for _ in $(seq 1 $((SYNC_WAIT_S * 10))); do
    sync=$(psql_at "$pport" "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'" || true)
    [[ "$sync" == "sync" ]] && break
    sleep 0.1
  done
  if [[ "$sync" != "sync" ]]; then
    echo "pg-ha-test-cluster: the standby did not become synchronous (state '$sync')" >&2
    tail -n 20 "$dir/standby.log" >&2 || true
    exit 1
  fi
  psql_at "$pport" "CREATE DATABASE cpns_test" >&2
  echo "$pport $sport"
}

postmaster_pid() {  # postmaster_pid NODE: empty if not running
  [[ -f "$dir/$1/postmaster.pid" ]] || return 0
  head -n 1 "$dir/$1/postmaster.pid"
}

kill_primary() {
  local pid children
  pid=$(postmaster_pid primary)
  if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
    echo "pg-ha-test-cluster: the primary is not running" >&2
    exit 1
  fi
  # The postmaster and every backend it started, at once, by process ID.
  children=$(ps -o pid= --ppid "$pid" || true)
  # shellcheck disable=SC2086
  kill -KILL "$pid" $children 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
}

promote() {
  local sport state
  sport=$(cat "$dir/standby.port")
  as_pg "$(pg_bin)/pg_ctl" -D "$dir/standby" -w -t "$PROMOTE_WAIT_S" promote >&2
  for _ in $(seq 1 $((PROMOTE_WAIT_S * 10))); do
    state=$(psql_at "$sport" "SELECT pg_is_in_recovery()" || true)
    [[ "$state" == "f" ]] && return 0
    sleep 0.1
  done
  echo "pg-ha-test-cluster: the standby did not leave recovery" >&2
  exit 1
}

stop() {
  local bin node pid
  [[ -e "$dir" ]] || return 0
  if [[ ! -e "$marker" ]]; then
    echo "pg-ha-test-cluster: $dir was not made by this script; not touching it" >&2
    exit 1
  fi
  bin=$(pg_bin)
  for node in primary standby; do
    pid=$(postmaster_pid "$node")
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
      continue
    fi
    if ! as_pg "$bin/pg_ctl" -D "$dir/$node" -m immediate -w -t 30 stop >&2; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -rf -- "$dir"
}

case "$action" in
  start) start ;;
  kill-primary) kill_primary ;;
  promote) promote ;;
  stop) stop ;;
  *) usage ;;
esac
