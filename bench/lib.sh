# Shared helpers for the benchmark scripts (sourced). Everything runs on 127.0.0.1 and is
# stopped on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fabrik-target}"
# FABRIK_BIN skips the build and uses that binary.
FABRIK="${FABRIK_BIN:-$CARGO_TARGET_DIR/release/fabrik}"
WORK="$(mktemp -d /tmp/fabrik-bench.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

build_fabrik() {
  [ -n "${FABRIK_BIN:-}" ] && return 0
  (cd "$ROOT" && cargo build --release -p fabrik >&2)
}

install_peers() {
  local missing=()
  command -v victoria-metrics >/dev/null || missing+=(victoria-metrics)
  command -v influxd >/dev/null || missing+=(influxdb)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (Debian packages)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    # Debian starts the packaged influxdb service on install where it can; we run our own.
    (service influxdb stop || true) >/dev/null 2>&1
  fi
}

wait_http() { # url
  for _ in $(seq 1 200); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $1" >&2; return 1
}

# Generates $1 truck lines from $2 trucks (`fabrik bench ingest --generate-only`) into
# $WORK/data.lp, and sets DATA, START and END: the generator starts at 2024-01-01T00:00:00Z
# and writes one line per truck every 10 s.
generate_trucks() { # points trucks
  DATA="$WORK/data.lp"
  "$FABRIK" bench ingest --points "$1" --trucks "$2" --generate-only "$DATA" >&2
  START=1704067200
  END=$((START + ($1 / $2) * 10))
}
iso() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; } # epoch seconds → RFC 3339

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# moto's S3 server (from the test venv, or MOTO_SERVER) on a free port with a bucket `bench`,
# and the environment that points `fabrik run` at it (`[store.objects]` endpoint and keys).
start_moto() { # → sets S3_PORT
  local moto="${MOTO_SERVER:-$HOME/.cache/fabrik-venv/bin/moto_server}"
  [ -x "$moto" ] || { echo "moto_server not found: set MOTO_SERVER or run .ci/run once" >&2; exit 1; }
  S3_PORT=$(free_port)
  "$moto" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$S3_PORT/"
  curl -fsS -XPUT "http://127.0.0.1:$S3_PORT/bench" >/dev/null
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
  export FABRIK__STORE__OBJECTS__ENDPOINT="http://127.0.0.1:$S3_PORT" FABRIK__STORE__OBJECTS__ALLOW_HTTP=true
}

# Stores MIB MiB of random bytes as one blob in the running Fabrik (admin token bench-token);
# the bytes stay in $WORK/blob.bin.
store_random_blob() { # mib → sets SUM (their SHA-256) and ID (the blob id)
  head -c "$(($1 << 20))" /dev/urandom >"$WORK/blob.bin"
  SUM=$(sha256sum "$WORK/blob.bin" | cut -d' ' -f1)
  ID=$(curl -fsS -H "Authorization: Bearer bench-token" -H "Content-Type: video/mp4" \
    --data-binary "@$WORK/blob.bin" "$FABRIK_URL/api/v1/blobs?table=camera&device=cam-1&signal=video" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  [ "$ID" = "sha256:$SUM" ] || { echo "stored as $ID" >&2; exit 1; }
}

start_fabrik() { # data_dir port → sets FABRIK_URL
  local port=$2
  FABRIK__STORE__DATA_DIR="$1" FABRIK__HTTP__LISTEN="127.0.0.1:$port" FABRIK__AUTH__ADMIN_TOKEN=bench-token \
    FABRIK__LOG__LEVEL=warn "$FABRIK" run >"$WORK/fabrik.log" 2>&1 &
  PIDS+=($!); FABRIK_PID=$!
  FABRIK_URL="http://127.0.0.1:$port"
  wait_http "$FABRIK_URL/ready"
}

start_vm() { # data_dir port → sets VM_URL
  victoria-metrics -storageDataPath="$1" -httpListenAddr="127.0.0.1:$2" -loggerLevel=ERROR >"$WORK/vm.log" 2>&1 &
  PIDS+=($!); VM_PID=$!
  VM_URL="http://127.0.0.1:$2"
  wait_http "$VM_URL/health"
}

start_influx() { # data_dir port → sets INFLUX_URL
  local dir=$1 port=$2
  mkdir -p "$dir"
  cat >"$dir/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$(free_port)"
[meta]
  dir = "$dir/meta"
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$port"
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
CONF
  influxd -config "$dir/influxdb.conf" >"$WORK/influx.log" 2>&1 &
  PIDS+=($!); INFLUX_PID=$!
  INFLUX_URL="http://127.0.0.1:$port"
  wait_http "$INFLUX_URL/ping"
  curl -fsS -XPOST "$INFLUX_URL/query" --data-urlencode "q=CREATE DATABASE bench" >/dev/null
}

admin() { # url action: POST /api/v1/admin/<action> (persist, compact) to a started Fabrik
  curl -fsS -XPOST -H "Authorization: Bearer bench-token" "$1/api/v1/admin/$2" >/dev/null
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
