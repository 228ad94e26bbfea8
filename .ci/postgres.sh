#!/usr/bin/env bash
# Starts a throw-away PostgreSQL server for the tests, on a clean Debian
# machine too: installs the distribution's `postgresql` package when the
# server programs are missing, creates a data directory owned by the
# `postgres` user (PostgreSQL refuses to run as root), starts the server on
# 127.0.0.1 on a free port, waits until it accepts connections and prints
# the line that points the tests at it:
#
#   export PROXY_RUNNER_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres
#
# Usage: .ci/postgres.sh [--env-file FILE]
#   --env-file FILE  also write that line to FILE (to be sourced).
# Only that line goes to stdout; progress goes to stderr. Environment:
#   PROXY_RUNNER_PG_PORT  first port to try (default 54329; the next free one is used)
#
# The server is for tests only: it trusts every loopback connection and
# does not fsync. It keeps running; stopping it is printed to stderr.
set -euo pipefail

env_file=
while [ $# -gt 0 ]; do
  case "$1" in
    --env-file)
      env_file=${2:?--env-file needs a file name}
      shift 2
      ;;
    -h | --help)
      sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "postgres.sh: unknown argument: $1" >&2
      exit 2
      ;;
  esac
done

say() { echo "postgres.sh: $*" >&2; }

# The directory of initdb and pg_ctl: from PATH, else the newest
# /usr/lib/postgresql/<version>/bin.
bin_dir() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
    echo "$d"
  fi
}

bin=$(bin_dir)
if [ -z "$bin" ]; then
  say "installing postgresql from the distribution's packages"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  bin=$(bin_dir)
  if [ -z "$bin" ]; then
    say "postgresql is installed but initdb and pg_ctl were not found"
    exit 1
  fi
fi
pg_isready=$bin/pg_isready
[ -x "$pg_isready" ] || pg_isready=$(command -v pg_isready)

# As root, the server runs as `postgres` (the package creates that user).
if [ "$(id -u)" = 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    say "creating the system user postgres"
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
  as_server() { runuser -u postgres -- "$@"; }
  owner=postgres
else
  as_server() { "$@"; }
  owner=$(id -un)
fi

base=$(mktemp -d "${TMPDIR:-/tmp}/proxy-runner-pg.XXXXXX")
chmod 755 "$base"
data=$base/data
sockets=$base/sockets
log_file=$base/server.log
mkdir "$data" "$sockets"
touch "$log_file"
chown "$owner" "$data" "$sockets" "$log_file"
chmod 700 "$data"

say "initdb in $data"
as_server "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
cat >>"$data/postgresql.conf" <<EOF

# proxy-runner test server: loopback only, throw-away data.
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sockets'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The first free port from PROXY_RUNNER_PG_PORT on; another process may take
# it between the check and the start, then the next one is tried.
port=${PROXY_RUNNER_PG_PORT:-54329}
last=$((port + 100))
while :; do
  if [ "$port" -gt "$last" ]; then
    say "no free port up to $last"
    exit 1
  fi
  if port_in_use "$port"; then
    port=$((port + 1))
    continue
  fi
  if as_server "$bin/pg_ctl" -D "$data" -l "$log_file" -o "-p $port" -w -t 60 start >/dev/null 2>&1; then
    break
  fi
  if ! port_in_use "$port"; then
    say "the server did not start; its log:"
    cat "$log_file" >&2
    exit 1
  fi
  port=$((port + 1))
done

for _ in $(seq 1 120); do
  if "$pg_isready" -q -h 127.0.0.1 -p "$port"; then
    break
  fi
  sleep 0.5
done
if ! "$pg_isready" -q -h 127.0.0.1 -p "$port"; then
  say "the server on port $port does not accept connections; its log:"
  cat "$log_file" >&2
  exit 1
fi

line="export PROXY_RUNNER_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/postgres"
say "PostgreSQL is ready on 127.0.0.1:$port (log: $log_file)"
if [ "$(id -u)" = 0 ]; then
  say "stop it with: runuser -u postgres -- $bin/pg_ctl -D $data -m fast stop"
else
  say "stop it with: $bin/pg_ctl -D $data -m fast stop"
fi
if [ -n "$env_file" ]; then
  echo "$line" >"$env_file"
fi
echo "$line"
