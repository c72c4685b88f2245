#!/usr/bin/env bash
# Ingest benchmark: one generated TSBS-IoT-like dataset written over HTTP line protocol, in the
# same run and with the same client, into Fabrik, VictoriaMetrics and InfluxDB 1.x.
#   bench/ingest.sh [POINTS] [BATCH] [CONCURRENCY] [ROUNDS]
# Prints the median points/s of each system over ROUNDS alternating rounds (default 5) and
# Fabrik's ratio to each. WITH_INFLUX=0 skips InfluxDB (slow: about 6 s per million points).
source "$(dirname "$0")/lib.sh"
POINTS=${1:-1000000}
BATCH=${2:-5000}
CONC=${3:-4}
ROUNDS=${4:-5}
WITH_INFLUX=${WITH_INFLUX:-1}

install_peers
build_fabrik
DATA="$WORK/data.lp"
"$FABRIK" bench ingest --points "$POINTS" --generate-only "$DATA" >&2

run_client() { # url path token-args...
  local url=$1 path=$2; shift 2
  "$FABRIK" bench ingest --input "$DATA" --batch "$BATCH" --concurrency "$CONC" \
    --url "$url" --path "$path" --json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["points_per_second"])'
}

# Rounds alternate the systems, each on a fresh data dir, so that drift in the machine's speed
# (other load, a noisy neighbour) hits all of them alike; the medians are compared.
FABRIK_RATES=(); VM_RATES=(); INFLUX_RATES=()
for round in $(seq 1 "$ROUNDS"); do
  rm -rf "$WORK/fabrik" "$WORK/vm" "$WORK/influx"
  start_fabrik "$WORK/fabrik" "$(free_port)"
  sleep 1
  [ "$round" = 1 ] && IDLE_RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$FABRIK_PID/status")
  FABRIK_RATES+=("$(run_client "$FABRIK_URL" /api/v1/write --token bench-token)")
  COUNT=$("$FABRIK" query "SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM diagnostics) AS n" --format csv --url "$FABRIK_URL" --token bench-token | tail -1)
  LOADED_RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$FABRIK_PID/status")
  stop_pid "$FABRIK_PID"
  if [ "$COUNT" != "$POINTS" ]; then echo "Fabrik stored $COUNT points, expected $POINTS" >&2; exit 1; fi

  start_vm "$WORK/vm" "$(free_port)"
  VM_RATES+=("$(run_client "$VM_URL" /write --no-auth)")
  stop_pid "$VM_PID"

  if [ "$WITH_INFLUX" = 1 ]; then
    start_influx "$WORK/influx" "$(free_port)"
    INFLUX_RATES+=("$(run_client "$INFLUX_URL" "/write?db=bench" --no-auth)")
    stop_pid "$INFLUX_PID"
  fi
done

python3 - "$POINTS" "$BATCH" "$CONC" "$COUNT" "$IDLE_RSS_KB" "$LOADED_RSS_KB" "${FABRIK_RATES[*]}" "${VM_RATES[*]}" "${INFLUX_RATES[*]:-}" <<'PY'
import statistics, sys
points, batch, conc, count, idle_kb, loaded_kb = sys.argv[1:7]
rates = [[float(x) for x in a.split()] for a in sys.argv[7:10]]
f, vm, ix = rates
def show(name, r):
    return f"  {name:<16} median {statistics.median(r):>12,.0f} points/s   runs: " + " ".join(f"{x:,.0f}" for x in r)
print(f"{points} points, {batch}-line batches, concurrency {conc}, {len(f)} alternating rounds")
print(show("Fabrik", f) + f"   (count(*) afterwards: {count})")
print(show("VictoriaMetrics", vm) + f"   Fabrik/VM = {statistics.median(f)/statistics.median(vm):.2f}x")
if ix:
    print(show("InfluxDB 1.x", ix) + f"   Fabrik/Influx = {statistics.median(f)/statistics.median(ix):.2f}x")
print(f"  Fabrik RSS: idle {int(idle_kb)/1024:.1f} MiB, after ingest {int(loaded_kb)/1024:.1f} MiB")
PY
