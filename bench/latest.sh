#!/usr/bin/env bash
# Latest values per signal (decision 0096): `GET /api/v1/devices/{id}/latest` on a table whose
# rows hold only the points that changed (as OPC UA data changes and Sparkplug reports by
# exception store them), against the same question asked as a full scan.
#   bench/latest.sh [ROWS] [RUNS]
# ROWS rows (default 2 M) over 100 devices and 20 signals, one or two signals per row, one
# text signal (`recipe`) reported once per device at the start. Loads them, persists and
# compacts, restarts (nothing cached), then times the first request (reads each segment's
# picks once), RUNS more (default 5, median and best), and the full scan of the same query
# (`AND time >= 0` keeps the optimizer from rewriting it) RUNS times.
source "$(dirname "$0")/lib.sh"
ROWS=${1:-2000000}
RUNS=${2:-5}
# Only the loading and timing helpers of truck_queries.sh are used; its truck queries need a
# time range to be defined.
START=1704067200 END=1704067201
source "$(dirname "$0")/truck_queries.sh"
build_fabrik
DATA="$WORK/sparse.lp"
python3 - "$ROWS" "$DATA" <<'PY'
import random, sys
rows, path = int(sys.argv[1]), sys.argv[2]
rng = random.Random(7)
start = 1_704_067_200 * 10**9
with open(path, "w") as out:
    for d in range(100):
        out.write(f'plant,device=dev-{d:03} recipe="Cola {d} 0.5 l" {start}\n')
    for i in range(rows - 100):
        d = i % 100
        fields = ",".join(f"s{s:02}={rng.random():.4f}" for s in sorted(rng.sample(range(20), rng.choice((1, 2)))))
        out.write(f"plant,device=dev-{d:03} {fields} {start + (i + 100) * 10_000_000}\n")
PY
export FABRIK__STORE__FLUSH_INTERVAL=1h
start_fabrik "$WORK/data" "$(free_port)"
curl -fsS -H "Authorization: Bearer bench-token" -H 'Content-Type: application/json' \
  -d '{"id":"dev-042","type":"plant"}' "$FABRIK_URL/api/v1/devices" >/dev/null
load "$FABRIK_URL" /api/v1/write --token bench-token
admin "$FABRIK_URL" persist
admin "$FABRIK_URL" compact
stop_pid "$FABRIK_PID"
start_fabrik "$WORK/data" "$(free_port)"
LATEST="$FABRIK_URL/api/v1/devices/dev-042/latest"
ms() { python3 -c "print(f'{float(\"$1\")*1000:.1f}')"; }
first=$(curl -fsS -o /dev/null -w '%{time_total}' -H "Authorization: Bearer bench-token" "$LATEST")
signals=$(curl -fsS -H "Authorization: Bearer bench-token" "$LATEST" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["values"]))')
times=()
for _ in $(seq 1 "$RUNS"); do
  times+=("$(curl -fsS -o /dev/null -w '%{time_total}' -H "Authorization: Bearer bench-token" "$LATEST")")
done
warm=$(python3 - "${times[@]}" <<'PY'
import statistics, sys
s = sorted(float(x) for x in sys.argv[1:])
print(f"{statistics.median(s)*1000:.1f} {s[0]*1000:.1f}")
PY
)
SCAN="SELECT $(python3 -c 'print(", ".join(f"last_value(s{i:02} ORDER BY time) IGNORE NULLS AS v{i}, max(time) FILTER (WHERE s{i:02} IS NOT NULL) AS t{i}" for i in range(20)) + ", last_value(recipe ORDER BY time) IGNORE NULLS AS recipe")') FROM plant WHERE device = 'dev-042' AND time >= arrow_cast(0, 'Timestamp(Nanosecond, None)')"
read -r scan_median scan_best _ < <(time_runs fabrik "$SCAN")
read -r warm_median warm_best <<<"$warm"
echo "rows $ROWS, signals reported by dev-042: $signals"
echo "latest, first request after a restart: $(ms "$first") ms"
echo "latest, later requests: median $warm_median ms, best $warm_best ms"
echo "the same as a full scan: median $scan_median ms, best $scan_best ms"
