#!/bin/bash
# A throwaway PostgreSQL server for the store tests: `pg_server.sh start DIR` initialises a
# cluster in DIR (removed first) and starts it listening on a Unix socket in DIR only (no TCP),
# trusting local connections as the role "kiln"; `pg_server.sh stop DIR` stops that server by
# the PID it wrote (postmaster.pid) and removes DIR. As root, the server runs as the postgres
# user (it refuses root). Connect with postgresql:///postgres?host=DIR&user=kiln.
# `pg_server.sh start DIR ADDR CIDR` listens on TCP ADDR:5432 too and trusts clients from CIDR
# (for hosts in other network namespaces; run it in the namespace that has ADDR):
# postgresql://kiln@ADDR/postgres.
# `pg_server.sh restart DIR [SECONDS]` stops the server and starts it again on the same data,
# SECONDS later (what a server restart does to its clients' connections).
set -euo pipefail
cmd=${1:?start, restart or stop} dir=${2:?directory} listen=${3:-} trusted=${4:-}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bindir" ] || { echo "pg_server.sh: no PostgreSQL server installed (postgresql-15)" >&2; exit 1; }
as=()
[ "$(id -u)" = 0 ] && as=(setpriv --reuid=postgres --regid=postgres --init-groups)

shutdown() {
  local pidfile=$dir/data/postmaster.pid pid
  if [ -f "$pidfile" ]; then
    pid=$(head -1 "$pidfile")
    if [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null; then  # fast shutdown
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
}

launch() {
  "${as[@]}" "$bindir/postgres" -D "$dir/data" -k "$dir" -c listen_addresses="$(cat "$dir/listen")" \
    -c fsync=off -c unix_socket_permissions=0770 >>"$dir/server.log" 2>&1 </dev/null &
  for _ in $(seq 1 300); do
    if "$bindir/pg_isready" -q -h "$dir"; then exit 0; fi
    sleep 0.1
  done
  echo "pg_server.sh: the server did not start:" >&2
  cat "$dir/server.log" >&2
  exit 1
}

case $cmd in
start)
  shutdown
  rm -rf "$dir"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  if ! "${as[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U kiln -N --no-instructions \
      >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    exit 1
  fi
  if [ -n "$listen" ]; then
    echo "host all all ${trusted:?a CIDR to trust} trust" >>"$dir/data/pg_hba.conf"
  fi
  echo "$listen" >"$dir/listen"
  launch
  ;;
restart)
  shutdown
  sleep "${3:-0}"
  launch
  ;;
stop)
  shutdown
  rm -rf "$dir"
  ;;
*) echo "usage: pg_server.sh start DIR [ADDR CIDR] | restart DIR [SECONDS] | stop DIR" >&2; exit 2 ;;
esac
