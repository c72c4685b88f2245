# The five TSBS-IoT-style queries over `generate_trucks` data, as QUERIES entries
# "name|Fabrik SQL|InfluxQL", and the helpers that load and time them (sourced after
# generate_trucks, which sets START and END, with RUNS set).
DAY_FROM=$(iso "$START"); DAY_TO=$(iso $((START + 86400)))
LAST_FROM=$(iso $((END - 600))); LAST_TO=$(iso "$END")
ALL_FROM=$(iso "$START"); ALL_TO=$(iso "$END")

# name | Fabrik SQL | InfluxQL. The same question in each system's own language; InfluxQL
# identifiers are quoted because `name` and `diagnostics` are InfluxQL keywords.
Q_LAST_LOC_SQL="SELECT name, last_value(latitude ORDER BY time) AS latitude, last_value(longitude ORDER BY time) AS longitude, max(time) AS time FROM readings GROUP BY name"
Q_LAST_LOC_IQL='SELECT "latitude", "longitude" FROM "readings" GROUP BY "name" ORDER BY time DESC LIMIT 1'
Q_AVG_SQL="SELECT fleet, date_bin(INTERVAL '1 hour', time) AS hour, avg(fuel_consumption) AS avg_fuel FROM readings WHERE time >= '$DAY_FROM' AND time < '$DAY_TO' GROUP BY fleet, hour ORDER BY fleet, hour"
Q_AVG_IQL="SELECT mean(\"fuel_consumption\") FROM \"readings\" WHERE time >= '$DAY_FROM' AND time < '$DAY_TO' GROUP BY \"fleet\", time(1h)"
Q_HIGH_SQL="SELECT name, driver, current_load, load_capacity FROM (SELECT name, driver, last_value(current_load ORDER BY time) AS current_load, last_value(load_capacity ORDER BY time) AS load_capacity FROM diagnostics GROUP BY name, driver) WHERE current_load >= 0.9 * load_capacity"
Q_HIGH_IQL='SELECT "current_load", "load_capacity" FROM (SELECT "current_load", "load_capacity" FROM "diagnostics" GROUP BY "name", "driver" ORDER BY time DESC LIMIT 1) WHERE "current_load" >= 0.9 * "load_capacity" GROUP BY "name" ORDER BY time DESC'
Q_STAT_SQL="SELECT name, driver, avg(velocity) AS mean_velocity FROM readings WHERE time > '$LAST_FROM' AND time <= '$LAST_TO' GROUP BY name, driver HAVING avg(velocity) < 1"
Q_STAT_IQL="SELECT \"mean_velocity\" FROM (SELECT mean(\"velocity\") AS \"mean_velocity\" FROM \"readings\" WHERE time > '$LAST_FROM' AND time <= '$LAST_TO' GROUP BY \"name\", \"driver\") WHERE \"mean_velocity\" < 1"
Q_DAILY_SQL="SELECT fleet, name, driver, day, count(*) / 6.0 AS hours_driven FROM (SELECT fleet, name, driver, date_bin(INTERVAL '1 day', time) AS day, date_bin(INTERVAL '10 minutes', time) AS slot, avg(velocity) AS mv FROM readings WHERE time >= '$ALL_FROM' AND time < '$ALL_TO' GROUP BY fleet, name, driver, day, slot) WHERE mv > 1 GROUP BY fleet, name, driver, day"
Q_DAILY_IQL="SELECT count(\"mv\") / 6 AS \"hours_driven\" FROM (SELECT mean(\"velocity\") AS \"mv\" FROM \"readings\" WHERE time >= '$ALL_FROM' AND time < '$ALL_TO' GROUP BY time(10m), \"fleet\", \"name\", \"driver\") WHERE \"mv\" > 1 AND time >= '$ALL_FROM' AND time < '$ALL_TO' GROUP BY time(1d), \"fleet\", \"name\", \"driver\""
QUERIES=(
  "last-loc|$Q_LAST_LOC_SQL|$Q_LAST_LOC_IQL"
  "avg-fuel-hourly-per-fleet|$Q_AVG_SQL|$Q_AVG_IQL"
  "high-load|$Q_HIGH_SQL|$Q_HIGH_IQL"
  "stationary-trucks|$Q_STAT_SQL|$Q_STAT_IQL"
  "daily-driving-duration|$Q_DAILY_SQL|$Q_DAILY_IQL"
)

# Each system is asked over HTTP with curl; a run's latency is curl's own time_total for the
# request (connect, query, full response), so no client-side JSON work or interpreter start-up
# is counted for either system. Rows are counted once, outside the timed runs.
fabrik_body() { python3 -c 'import json,sys; print(json.dumps({"sql": sys.argv[1]}))' "$1"; }
fabrik_request() { # sql → curl arguments (after the output and format options)
  printf '%s\n' -H "Authorization: Bearer bench-token" -H 'Content-Type: application/json' \
    --data-binary "$(fabrik_body "$1")" "$FABRIK_URL/api/v1/query"
}
fabrik_rows() {
  python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d["rows"]) if isinstance(d,dict) else len(d))'
}
# time_runs system query → "median_ms best_ms rows"
time_runs() {
  local system=$1 q=$2 rows times=() args
  mapfile -t args < <("${system}_request" "$q")
  rows=$(curl -fsS "${args[@]}" | "${system}_rows") || { echo "query failed: $q" >&2; exit 1; }
  for _ in $(seq 1 "$RUNS"); do
    times+=("$(curl -fsS -o /dev/null -w '%{time_total}' "${args[@]}")")
  done
  python3 - "$rows" "${times[@]}" <<'PY'
import statistics, sys
rows = sys.argv[1]; s = sorted(float(x) for x in sys.argv[2:])
print(f"{statistics.median(s)*1000:.1f} {s[0]*1000:.1f} {rows}")
PY
}

load() { # url path token-args...
  local url=$1 path=$2; shift 2
  "$FABRIK" bench ingest --input "$DATA" --batch 5000 --concurrency 4 --url "$url" --path "$path" --json "$@" >/dev/null
}

