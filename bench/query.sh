#!/usr/bin/env bash
# Query benchmark: five TSBS-IoT-style queries over the same generated truck data, loaded into
# Fabrik (SQL) and InfluxDB 1.x (InfluxQL) in the same run.
#   bench/query.sh [POINTS] [RUNS]
# Loads POINTS points (default 10 M) into each system, persists Fabrik's buffer to Parquet (so
# the queries read segments, as they would after a restart), then runs every query once to warm
# up and RUNS times (default 5) timed, and prints the median and best latency per system.
source "$(dirname "$0")/lib.sh"
POINTS=${1:-10000000}
RUNS=${2:-5}
TRUCKS=1000

install_peers
build_fabrik
generate_trucks "$POINTS" "$TRUCKS"
source "$(dirname "$0")/truck_queries.sh"

influx_request() {
  printf '%s\n' -G "$INFLUX_URL/query" --data-urlencode "db=bench" --data-urlencode "epoch=ns" \
    --data-urlencode "q=$1"
}
influx_rows() {
  python3 -c 'import json,sys; d=json.load(sys.stdin); r=d["results"][0]
if "error" in r: sys.exit("InfluxDB: "+r["error"])
print(sum(len(s["values"]) for s in r.get("series",[])))'
}

declare -A FAB INF
start_fabrik "$WORK/fabrik" "$(free_port)"
load "$FABRIK_URL" /api/v1/write --token bench-token
curl -fsS -XPOST -H "Authorization: Bearer bench-token" "$FABRIK_URL/api/v1/admin/persist" >/dev/null
curl -fsS -XPOST -H "Authorization: Bearer bench-token" "$FABRIK_URL/api/v1/admin/compact" >/dev/null
for entry in "${QUERIES[@]}"; do
  IFS='|' read -r name sql _ <<<"$entry"
  FAB[$name]=$(time_runs fabrik "$sql")
done
stop_pid "$FABRIK_PID"

start_influx "$WORK/influx" "$(free_port)"
load "$INFLUX_URL" "/write?db=bench" --no-auth
for entry in "${QUERIES[@]}"; do
  IFS='|' read -r name _ influxql <<<"$entry"
  INF[$name]=$(time_runs influx "$influxql")
done
stop_pid "$INFLUX_PID"

echo "$POINTS points, $RUNS timed runs per query (median / best, ms; rows returned)"
printf '  %-26s %22s %22s %8s\n' query Fabrik "InfluxDB 1.x" ratio
for entry in "${QUERIES[@]}"; do
  IFS='|' read -r name _ _ <<<"$entry"
  read -r fm fb fr <<<"${FAB[$name]}"
  read -r im ib ir <<<"${INF[$name]}"
  ratio=$(python3 -c "print(f'{$im/$fm:.2f}x')")
  printf '  %-26s %9s / %-7s %5s %9s / %-7s %5s %8s\n' "$name" "$fm" "$fb" "($fr)" "$im" "$ib" "($ir)" "$ratio"
done
echo "ratio = InfluxDB median / Fabrik median (above 1: Fabrik faster)"
