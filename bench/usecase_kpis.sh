#!/usr/bin/env bash
# Use-case KPIs (decision 0025): how long measuring a use case's KPIs takes over the
# TSBS-IoT-like truck data, in pilot (ten trucks, an IN list) and at enterprise (every truck),
# and a 24-bucket history. Each KPI is one query: downtime (time-weighted, LEAD per truck), an
# energy cost (a power expression integrated the same way), a p95 and a mean.
#   bench/usecase_kpis.sh [POINTS] [RUNS]
# Loads POINTS lines (default 1 M; 1,000 trucks, one `readings` line per truck every 10 s),
# persists and compacts, then times RUNS requests (default 5) after one warm-up, and prints the
# median and best of curl's time_total.
source "$(dirname "$0")/lib.sh"
POINTS=${1:-1000000}
RUNS=${2:-5}
TRUCKS=1000

build_fabrik
generate_trucks "$POINTS" "$TRUCKS"
FROM=$(iso "$START"); TO=$(iso "$END")

start_fabrik "$WORK/fabrik" "$(free_port)"
"$FABRIK" bench ingest --input "$DATA" --batch 5000 --concurrency 4 --url "$FABRIK_URL" \
  --path /api/v1/write --token bench-token --json >/dev/null
auth=(-H "Authorization: Bearer bench-token" -H 'Content-Type: application/json')
curl -fsS -XPOST "${auth[@]}" "$FABRIK_URL/api/v1/admin/persist" >/dev/null
curl -fsS -XPOST "${auth[@]}" "$FABRIK_URL/api/v1/admin/compact" >/dev/null

pilot=$(python3 -c 'import json; print(json.dumps([f"truck_{i}" for i in range(10)]))')
curl -fsS -XPUT "${auth[@]}" "$FABRIK_URL/api/v1/usecases/fleet" --data-binary @- >/dev/null <<JSON
{"objective": "Keep the fleet moving", "pilot": {"devices": $pilot},
 "kpis": [
  {"name": "stopped", "kind": "downtime", "table": "readings", "device_column": "name",
   "condition": "velocity = 0", "max_gap": "1m"},
  {"name": "fuel-cost", "kind": "energy_cost", "table": "readings", "device_column": "name",
   "signal": "fuel_consumption * 10.0", "price_per_kwh": 0.2, "max_gap": "1m"},
  {"name": "p95-velocity", "kind": "aggregate", "table": "readings", "device_column": "name",
   "signal": "velocity", "aggregate": "p95"},
  {"name": "mean-fuel", "kind": "aggregate", "table": "readings", "device_column": "name",
   "signal": "fuel_consumption", "aggregate": "mean"}
 ]}
JSON

# time_get path → "median_ms best_ms"
time_get() {
  local url="$FABRIK_URL$1" times=()
  curl -fsS -o /dev/null "${auth[@]}" "$url"
  for _ in $(seq 1 "$RUNS"); do
    times+=("$(curl -fsS -o /dev/null -w '%{time_total}' "${auth[@]}" "$url")")
  done
  python3 - "${times[@]}" <<'PY'
import statistics, sys
s = sorted(float(x) for x in sys.argv[1:])
print(f"{statistics.median(s)*1000:.1f} {s[0]*1000:.1f}")
PY
}

echo "points=$POINTS trucks=$TRUCKS period=$FROM..$TO runs=$RUNS"
echo "request | median ms | best ms"
echo "pilot (10 trucks), 4 KPIs | $(time_get "/api/v1/usecases/fleet/kpis?from=$FROM&to=$TO")"
echo "pilot, 24-bucket history (96 queries) | $(time_get "/api/v1/usecases/fleet/kpis/history?from=$FROM&to=$TO&buckets=24")"
stage() { # from to
  curl -fsS -XPOST "${auth[@]}" "$FABRIK_URL/api/v1/usecases/fleet/stage" \
    -d "{\"from\": \"$1\", \"to\": \"$2\", \"reason\": \"benchmark\", \"force\": true}" >/dev/null
}
stage pilot scale_up
stage scale_up enterprise
echo "enterprise (1,000 trucks), 4 KPIs | $(time_get "/api/v1/usecases/fleet/kpis?from=$FROM&to=$TO")"
echo "enterprise, 24-bucket history (96 queries) | $(time_get "/api/v1/usecases/fleet/kpis/history?from=$FROM&to=$TO&buckets=24")"
curl -fsS "${auth[@]}" "$FABRIK_URL/api/v1/usecases/fleet/kpis?from=$FROM&to=$TO" >"$WORK/kpis.json"
python3 - "$WORK/kpis.json" <<'PY'
import json, sys
for k in json.load(open(sys.argv[1]))["kpis"]:
    c = k["current"]
    print("  %s: %s (%s)" % (k["name"], c["value"], c.get("error") or c["detail"]))
PY
