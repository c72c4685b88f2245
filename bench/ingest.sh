#!/usr/bin/env bash
# Ingest benchmark: one generated TSBS-IoT-like dataset written over HTTP line protocol, in the
# same run and with the same client, into Fabrik, VictoriaMetrics and InfluxDB 1.x.
#   bench/ingest.sh [POINTS] [BATCH] [CONCURRENCY]
# Prints points/s for each system and Fabrik's ratio to each.
source "$(dirname "$0")/lib.sh"
POINTS=${1:-1000000}
BATCH=${2:-5000}
CONC=${3:-4}

install_peers
build_fabrik
DATA="$WORK/data.lp"
"$FABRIK" bench ingest --points "$POINTS" --generate-only "$DATA" >&2

run_client() { # url path token-args...
  local url=$1 path=$2; shift 2
  "$FABRIK" bench ingest --input "$DATA" --batch "$BATCH" --concurrency "$CONC" \
    --url "$url" --path "$path" --json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["points_per_second"])'
}

start_fabrik "$WORK/fabrik" "$(free_port)"
sleep 1
IDLE_RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$FABRIK_PID/status")
FABRIK_RATE=$(run_client "$FABRIK_URL" /api/v1/write --token bench-token)
COUNT=$("$FABRIK" query "SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM diagnostics) AS n" --format csv --url "$FABRIK_URL" --token bench-token | tail -1)
LOADED_RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$FABRIK_PID/status")
stop_pid "$FABRIK_PID"

start_vm "$WORK/vm" "$(free_port)"
VM_RATE=$(run_client "$VM_URL" /write --no-auth)
stop_pid "$VM_PID"

start_influx "$WORK/influx" "$(free_port)"
INFLUX_RATE=$(run_client "$INFLUX_URL" "/write?db=bench" --no-auth)
stop_pid "$INFLUX_PID"

python3 - "$POINTS" "$BATCH" "$CONC" "$FABRIK_RATE" "$VM_RATE" "$INFLUX_RATE" "$COUNT" "$IDLE_RSS_KB" "$LOADED_RSS_KB" <<'PY'
import sys
points, batch, conc = sys.argv[1:4]
f, vm, ix = map(float, sys.argv[4:7])
count, idle_kb, loaded_kb = sys.argv[7:10]
print(f"{points} points, {batch}-line batches, concurrency {conc}")
print(f"  Fabrik           {f:>12,.0f} points/s   (count(*) afterwards: {count})")
print(f"  VictoriaMetrics  {vm:>12,.0f} points/s   Fabrik/VM     = {f/vm:.2f}x")
print(f"  InfluxDB 1.x     {ix:>12,.0f} points/s   Fabrik/Influx = {f/ix:.2f}x")
print(f"  Fabrik RSS: idle {int(idle_kb)/1024:.1f} MiB, after ingest {int(loaded_kb)/1024:.1f} MiB")
PY
