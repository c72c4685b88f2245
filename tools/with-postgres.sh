#!/usr/bin/env bash
# Runs a command beside a throwaway PostgreSQL server (Debian's postgresql package) on a free
# port of 127.0.0.1, whose maintenance database FABRIK_TEST_POSTGRES_URL names; the server and
# its files are gone when the command ends. .ci/run runs the registry's tests with it, so they
# pass on PostgreSQL as well as on SQLite (decision 0055).
#   tools/with-postgres.sh cargo test -p fabrik-registry --lib
set -euo pipefail
bin="${FABRIK_POSTGRES_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
[ -x "$bin/postgres" ] || { echo "no PostgreSQL server (apt install postgresql)" >&2; exit 2; }
dir="$(mktemp -d)"
as_server=()
if [ "$(id -u)" = 0 ]; then
  # The server refuses to run as root: Debian's package made the postgres account.
  chown postgres: "$dir"
  as_server=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
stop() {
  "${as_server[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
LC_ALL=C "${as_server[@]}" "$bin/initdb" -D "$dir/data" -U fabrik --auth=trust -E UTF8 \
  --no-locale --no-sync >/dev/null
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# Tests need no durability; a benchmark does (FABRIK_POSTGRES_DURABLE=1 keeps fsync on).
durability="-c fsync=off"
[ "${FABRIK_POSTGRES_DURABLE:-0}" = 1 ] && durability=""
"${as_server[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
  "-p $port -k $dir -c listen_addresses=127.0.0.1 $durability -c max_connections=200" \
  start >/dev/null
echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
FABRIK_TEST_POSTGRES_URL="postgres://fabrik@127.0.0.1:$port/postgres" "$@"
