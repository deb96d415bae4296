# Sourced by scripts/test and bench/run: `start_postgres` starts a private PostgreSQL server (Debian's
# package, installed when missing), with its own data directory in a temp dir and a free loopback port,
# and exports SWITCHYARD_TEST_DATABASE_URL; `pg_stop` (an array) stops it, `pg_dir` is removed after.
start_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test: installing postgresql (Debian package) for the PostgreSQL backend's tests" >&2
    { apt-get install -y --no-install-recommends postgresql >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends postgresql >/dev/null 2>&1; }; } \
      || echo "scripts/test: could not install postgresql; the PostgreSQL tests will fail and say so" >&2
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
  [ -n "$bin" ] || return 0
  pg_dir=$(mktemp -d)
  local as=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$pg_dir"
    as=(runuser -u postgres --)
  fi
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${as[@]}" "$bin/initdb" -D "$pg_dir/data" -U switchyard -A trust --no-sync >"$pg_dir/initdb.log" 2>&1 \
    || { cat "$pg_dir/initdb.log" >&2; echo "scripts/test: initdb failed" >&2; return 0; }
  "${as[@]}" "$bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $pg_dir -c max_connections=400 -c fsync=off" start >/dev/null \
    || { cat "$pg_dir/server.log" >&2; echo "scripts/test: PostgreSQL did not start" >&2; return 0; }
  export SWITCHYARD_TEST_DATABASE_URL="postgres://switchyard@127.0.0.1:$port/postgres"
  pg_stop=("${as[@]}" "$bin/pg_ctl" -D "$pg_dir/data" -m immediate stop)
}
