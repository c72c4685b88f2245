#!/usr/bin/env bash
# The registry's database operations on SQLite and on PostgreSQL (decision 0055), release
# build, same machine: audit appends, device events, the activity flush, device reads and
# listings, the audit chain's verification. PostgreSQL is Debian's, started on a free port with
# fsync on (tools/with-postgres.sh), reached over TCP on 127.0.0.1.
#   bench/registry.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fabrik-target}"
cd "$ROOT"
cargo bench --locked -p fabrik-registry --bench backends --no-run >&2
echo "== SQLite (embedded file, WAL, synchronous NORMAL)"
cargo bench --locked -q -p fabrik-registry --bench backends
echo "== PostgreSQL (local server, fsync on)"
FABRIK_POSTGRES_DURABLE=1 tools/with-postgres.sh sh -c '
  psql "$FABRIK_TEST_POSTGRES_URL" -qc "CREATE DATABASE bench" &&
  FABRIK_BENCH_POSTGRES_URL="${FABRIK_TEST_POSTGRES_URL%/*}/bench" \
    cargo bench --locked -q -p fabrik-registry --bench backends'
