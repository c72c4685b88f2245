#!/usr/bin/env bash
# Rollups (decision 0085): what a first start's summarising of stored rows costs, and what the
# summaries save a query. Loads POINTS truck lines (default 1 M; 1,000 trucks, one `readings`
# line per truck every 10 s, from 2024-01-01), persists and compacts them, then restarts with
#   [[store.rollups]] table = "readings", every = "1h"
# and times the rollup from the restart until `readings_1h` holds every truck-hour (measured by
# the same aggregation over the rows). Then the query a trend chart asks — hourly mean velocity
# per truck over the whole range — from the rows and from the summaries, RUNS times each
# (default 5), median and best of curl's time_total. ROLLUP_HOLD sets the rollup's `hold`
# (decision 0087; "0s": no time-weighted means; unset: the default, 1h).
#   [ROLLUP_HOLD=0s] bench/rollups.sh [POINTS] [RUNS]
source "$(dirname "$0")/lib.sh"
POINTS=${1:-1000000}
RUNS=${2:-5}
TRUCKS=1000

build_fabrik
generate_trucks "$POINTS" "$TRUCKS"
start_fabrik "$WORK/fabrik" "$(free_port)"
"$FABRIK" bench ingest --input "$DATA" --batch 5000 --concurrency 4 --url "$FABRIK_URL" \
  --path /api/v1/write --token bench-token --json >/dev/null
auth=(-H "Authorization: Bearer bench-token" -H 'Content-Type: application/json')
curl -fsS -XPOST "${auth[@]}" "$FABRIK_URL/api/v1/admin/persist" >/dev/null
curl -fsS -XPOST "${auth[@]}" "$FABRIK_URL/api/v1/admin/compact" >/dev/null
query() { # sql → the JSON rows
  curl -fsS -XPOST "${auth[@]}" "$FABRIK_URL/api/v1/query" \
    --data-binary "$(python3 -c 'import json,sys; print(json.dumps({"sql": sys.argv[1]}))' "$1")"
}
count() { query "$1" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r[0]["n"] if r else 0)'; }
HOUR=3600000000000
expected=$(count "SELECT count(*) AS n FROM (SELECT name, CAST(time AS BIGINT) / $HOUR AS h FROM readings WHERE velocity IS NOT NULL GROUP BY 1, 2)")
rows=$(count "SELECT count(*) AS n FROM readings")
kill "$FABRIK_PID"; wait "$FABRIK_PID" 2>/dev/null || true

cat >"$WORK/rollups.toml" <<TOML
[[store.rollups]]
table = "readings"
every = "1h"
hold = "${ROLLUP_HOLD:-}"
TOML
port=$(free_port)
began=$(date +%s.%N)
FABRIK__STORE__DATA_DIR="$WORK/fabrik" FABRIK__HTTP__LISTEN="127.0.0.1:$port" FABRIK__AUTH__ADMIN_TOKEN=bench-token \
  FABRIK__LOG__LEVEL=warn "$FABRIK" run --config "$WORK/rollups.toml" >"$WORK/fabrik.log" 2>&1 &
PIDS+=($!); FABRIK_PID=$!
FABRIK_URL="http://127.0.0.1:$port"
wait_http "$FABRIK_URL/ready"
ready=$(date +%s.%N)
summarised=0
for _ in $(seq 1 6000); do
  # Truck-hours with samples: time-weighted means add rows for hours a value stood into.
  summarised=$(count "SELECT count(*) AS n FROM readings_1h WHERE velocity_count IS NOT NULL" 2>/dev/null || echo 0)
  [ "$summarised" -ge "$expected" ] && break
  sleep 0.05
done
done_at=$(date +%s.%N)
python3 - "$rows" "$expected" "$summarised" "$began" "$ready" "$done_at" <<'PY'
import sys
rows, expected, summarised = map(int, sys.argv[1:4])
began, ready, done = map(float, sys.argv[4:7])
print(f"{rows:,} rows, {expected:,} truck-hours: {summarised:,} summaries "
      f"{done - began:.2f} s after the start ({done - ready:.2f} s after /ready), "
      f"{rows / (done - began):,.0f} rows/s")
PY

time_query() { # label sql
  local times=()
  for _ in $(seq 0 "$RUNS"); do
    times+=("$(curl -fsS -o /dev/null -w '%{time_total}' -XPOST "${auth[@]}" "$FABRIK_URL/api/v1/query" \
      --data-binary "$(python3 -c 'import json,sys; print(json.dumps({"sql": sys.argv[1]}))' "$2")")")
  done
  python3 - "$1" "${times[@]}" <<'PY'
import statistics, sys
label, times = sys.argv[1], [float(t) for t in sys.argv[3:]]  # the first run warms up
print(f"{label:<28} median {statistics.median(times) * 1000:8.1f} ms, best {min(times) * 1000:8.1f} ms")
PY
}
time_query "from the rows" "SELECT name, CAST(time AS BIGINT) / $HOUR AS h, avg(velocity) AS v FROM readings GROUP BY 1, 2"
time_query "from readings_1h" "SELECT name, time, velocity_mean AS v FROM readings_1h"
