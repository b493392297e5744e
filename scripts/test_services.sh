#!/usr/bin/env bash
# Throw-away PostgreSQL and Redis servers on loopback for the integration tests
# (tests/test_integration_asyncpg.py, tests/test_integration_redis.py).
#
#   eval "$(bash scripts/test_services.sh start [DIR])"   # prints the exports below
#   bash scripts/test_services.sh stop DIR
#
# `start` installs the Debian packages when the servers are missing (as root: apt-get),
# creates a fresh PostgreSQL cluster (run as the `postgres` user when started as root,
# since initdb refuses root) and a Redis server, both under DIR (default: a new temp
# dir), on free ports of 127.0.0.1 with no persistence, waits until both answer, and
# prints on stdout:
#   export TOKIOLOOP_TEST_SERVICES_DIR=DIR
#   export TOKIOLOOP_TEST_PG_DSN=postgresql://postgres@127.0.0.1:PORT/postgres
#   export TOKIOLOOP_TEST_PG_SOCKET=DIR/pg/.s.PGSQL.PORT
#   export TOKIOLOOP_TEST_REDIS_URL=redis://127.0.0.1:PORT/0
#   export TOKIOLOOP_TEST_REDIS_UNIX_URL=unix://DIR/redis.sock?db=0
# PostgreSQL also accepts TLS (a self-signed certificate made with openssl).
# Progress goes to stderr. `stop DIR` stops both and removes DIR.
set -euo pipefail

log() { echo "test_services: $*" >&2; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -n "$d" && -x "$d/initdb" ]]; then
    echo "$d"
  elif command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  fi
}

install_packages() {
  local missing=()
  [[ -n "$(pg_bindir)" ]] || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
      log "missing ${missing[*]} and not root: install them with apt-get"
      return 1
    fi
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # Debian's postinst scripts may try to start the packaged services; no init
    # system runs here, and ours are started below anyway.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

as_pg_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  local dir=${1:-}
  install_packages
  if [[ -z "$dir" ]]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/tokioloop-services.XXXXXX")
  fi
  mkdir -p "$dir"
  chmod 755 "$dir"
  local t0=$SECONDS

  # PostgreSQL: a fresh cluster, trust auth on loopback only, no fsync.
  local bindir pg_port pgroot
  bindir=$(pg_bindir)
  pg_port=$(free_port)
  pgroot="$dir/pg"   # owned by the server's user: data, socket and log
  mkdir -p "$pgroot"
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$pgroot"
  fi
  as_pg_owner "$bindir/initdb" -D "$pgroot/data" -U postgres --auth=trust -E UTF8 --no-sync \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
  # A self-signed certificate, so that clients can ask for TLS (asyncpg upgrades the
  # connection with loop.start_tls); plain connections stay allowed.
  local ssl_opts=""
  if command -v openssl >/dev/null 2>&1; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" \
      -keyout "$pgroot/server.key" -out "$pgroot/server.crt" >/dev/null 2>&1
    chmod 600 "$pgroot/server.key"
    if [[ $(id -u) -eq 0 ]]; then chown postgres: "$pgroot/server.key" "$pgroot/server.crt"; fi
    ssl_opts="-c ssl=on -c ssl_cert_file=$pgroot/server.crt -c ssl_key_file=$pgroot/server.key"
  else
    log "no openssl: PostgreSQL runs without TLS"
  fi
  as_pg_owner "$bindir/pg_ctl" -D "$pgroot/data" -l "$pgroot/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$pgroot -c fsync=off -c synchronous_commit=off -c full_page_writes=off $ssl_opts" \
    start >&2 || { cat "$pgroot/postgres.log" >&2; return 1; }
  "$bindir/pg_isready" -h 127.0.0.1 -p "$pg_port" -t 30 >&2
  echo "$bindir" >"$dir/pg_bindir"

  # Redis: no persistence, loopback only.
  local redis_port
  redis_port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redis_port" --daemonize yes --dir "$dir" \
    --unixsocket "$dir/redis.sock" --unixsocketperm 700 \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save "" --appendonly no
  local i
  for i in $(seq 1 100); do
    if redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
      break
    fi
    sleep 0.1
  done
  redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null
  echo "$redis_port" >"$dir/redis_port"

  log "PostgreSQL on 127.0.0.1:$pg_port and Redis on 127.0.0.1:$redis_port up in $((SECONDS - t0)) s (dir $dir)"
  echo "export TOKIOLOOP_TEST_SERVICES_DIR=$dir"
  echo "export TOKIOLOOP_TEST_PG_DSN=postgresql://postgres@127.0.0.1:$pg_port/postgres"
  echo "export TOKIOLOOP_TEST_PG_SOCKET=$dir/pg/.s.PGSQL.$pg_port"
  echo "export TOKIOLOOP_TEST_REDIS_URL=redis://127.0.0.1:$redis_port/0"
  echo "export TOKIOLOOP_TEST_REDIS_UNIX_URL=unix://$dir/redis.sock?db=0"
}

stop() {
  local dir=${1:?usage: test_services.sh stop DIR}
  [[ -d "$dir" ]] || return 0
  if [[ -f "$dir/pg_bindir" && -d "$dir/pg/data" ]]; then
    as_pg_owner "$(cat "$dir/pg_bindir")/pg_ctl" -D "$dir/pg/data" -m fast -w stop >&2 || true
  fi
  if [[ -f "$dir/redis.pid" ]]; then
    local pid
    pid=$(cat "$dir/redis.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$dir"
  log "stopped and removed $dir"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start [DIR] | stop DIR" >&2; exit 2 ;;
esac
