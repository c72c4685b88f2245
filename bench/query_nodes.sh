#!/usr/bin/env bash
# Query nodes (decision 0079): the five truck queries on the node that writes a bucket prefix
# and on a read-only query node over it, and how long a persisted row takes to reach the query
# node. moto's S3 server on 127.0.0.1 (the test venv's) holds the segments.
#   bench/query_nodes.sh [POINTS] [RUNS] [LAGS]
# Loads POINTS points (default 2 M) into the writer, persists and compacts, starts a query node
# (segment cache 2 GiB, as the writer has) and times each query RUNS times (default 5) on both
# after one untimed run. Then, LAGS times (default 10): one row written and persisted on the
# writer, the query node asked every 50 ms until it counts it; with refresh_interval 2s the lag
# should lie between 0 and 2 s plus a refresh's own time.
source "$(dirname "$0")/lib.sh"
POINTS=${1:-2000000}
RUNS=${2:-5}
LAGS=${3:-10}
TRUCKS=1000

build_fabrik
generate_trucks "$POINTS" "$TRUCKS"
source "$(dirname "$0")/truck_queries.sh"

start_moto
export FABRIK__STORE__FLUSH_INTERVAL=1h FABRIK__STORE__OBJECTS__URL="s3://bench/hub"
export FABRIK__STORE__OBJECTS__SEGMENT_CACHE=2GiB

count_probe() { # url → rows of table probe (0 before it exists)
  curl -sS -H "Authorization: Bearer bench-token" -H 'Content-Type: application/json' \
    --data-binary '{"sql": "SELECT count(*) AS n FROM probe"}' "$1/api/v1/query" |
    python3 -c '
import json, sys
d = json.load(sys.stdin)
rows = d.get("rows") if isinstance(d, dict) else d
first = rows[0] if rows else 0
print(first.get("n", 0) if isinstance(first, dict) else first[0] if isinstance(first, list) else 0)' 2>/dev/null || echo 0
}

start_fabrik "$WORK/hub" "$(free_port)"
WRITER_URL=$FABRIK_URL
load "$WRITER_URL" /api/v1/write --token bench-token
admin "$WRITER_URL" persist
admin "$WRITER_URL" compact

export FABRIK__STORE__OBJECTS__READ_ONLY=true FABRIK__STORE__OBJECTS__REFRESH_INTERVAL=2s
start_fabrik "$WORK/query" "$(free_port)"
unset FABRIK__STORE__OBJECTS__READ_ONLY FABRIK__STORE__OBJECTS__REFRESH_INTERVAL
READER_URL=$FABRIK_URL

declare -A OWNER READER
for entry in "${QUERIES[@]}"; do
  IFS='|' read -r name sql _ <<<"$entry"
  FABRIK_URL=$WRITER_URL
  OWNER[$name]=$(time_runs fabrik "$sql")
  FABRIK_URL=$READER_URL
  READER[$name]=$(time_runs fabrik "$sql")
done

LAG_MS=()
for i in $(seq 1 "$LAGS"); do
  curl -fsS -XPOST -H "Authorization: Bearer bench-token" --data-binary "probe,run=$i v=$i" \
    "$WRITER_URL/api/v1/write" >/dev/null
  admin "$WRITER_URL" persist
  persisted=$(date +%s%N)
  until [ "$(count_probe "$READER_URL")" -ge "$i" ]; do sleep 0.05; done
  LAG_MS+=($((($(date +%s%N) - persisted) / 1000000)))
  # A random pause over a whole refresh cycle, so the next persist does not land at the same
  # point of the cycle as this one's refresh (which would phase-lock every lag).
  sleep "$((RANDOM % 2)).$((RANDOM % 10))"
done

echo "$POINTS points in moto's S3, both nodes with a 2 GiB segment cache; $RUNS timed runs per query (median / best, ms)"
printf '  %-26s %18s %18s %10s\n' query "writer" "query node" ratio
for entry in "${QUERIES[@]}"; do
  IFS='|' read -r name _ _ <<<"$entry"
  read -r om ob orows <<<"${OWNER[$name]}"
  read -r rm rb rrows <<<"${READER[$name]}"
  [ "$orows" = "$rrows" ] || echo "  $name: $orows rows on the writer, $rrows on the query node" >&2
  ratio=$(python3 -c "print(f'{$rm/$om:.2f}x')")
  printf '  %-26s %8s / %-7s %8s / %-7s %10s\n' "$name" "$om" "$ob" "$rm" "$rb" "$ratio"
done
echo "ratio = query node median / writer median"
echo "persist → visible on the query node (refresh_interval 2s), ms: ${LAG_MS[*]}"
python3 -c "import statistics,sys; v=sorted(map(int,sys.argv[1:])); print(f'  median {statistics.median(v):.0f}, max {v[-1]}')" "${LAG_MS[@]}"
