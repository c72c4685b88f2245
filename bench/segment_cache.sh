#!/usr/bin/env bash
# Segment cache benchmark (decision 0064): the five truck queries against a store whose
# segments are in an S3 bucket (moto's server on 127.0.0.1, from the test venv), without and
# with `[store.objects] segment_cache`.
#   bench/segment_cache.sh [POINTS] [RUNS]
# Loads POINTS points (default 2 M), persists and compacts, then times each query RUNS times
# (default 5) after one untimed run: without a cache every run reads the bucket; with one, the
# untimed run already finds the copies the persist and compaction kept. Then the node is
# restarted with the cache emptied and each query's first (cold) run is timed once.
# moto runs on the same host, so no request pays a network round trip: against a remote bucket
# the gap would be wider.
source "$(dirname "$0")/lib.sh"
POINTS=${1:-2000000}
RUNS=${2:-5}
TRUCKS=1000

build_fabrik
generate_trucks "$POINTS" "$TRUCKS"
source "$(dirname "$0")/truck_queries.sh"

start_moto
export FABRIK__STORE__FLUSH_INTERVAL=1h

time_once() { # sql → ms of one run
  local args
  mapfile -t args < <(fabrik_request "$1")
  python3 -c "print(f'{float(\"$(curl -fsS -o /dev/null -w '%{time_total}' "${args[@]}")\")*1000:.1f}')"
}

declare -A OFF ON COLD
run_with() { # prefix cache → fills the array named by $3
  local -n results=$3
  export FABRIK__STORE__OBJECTS__URL="s3://bench/$1" FABRIK__STORE__OBJECTS__SEGMENT_CACHE="$2"
  start_fabrik "$WORK/$1" "$(free_port)"
  load "$FABRIK_URL" /api/v1/write --token bench-token
  admin "$FABRIK_URL" persist
  admin "$FABRIK_URL" compact
  for entry in "${QUERIES[@]}"; do
    IFS='|' read -r name sql _ <<<"$entry"
    results[$name]=$(time_runs fabrik "$sql")
  done
  stop_pid "$FABRIK_PID"
}
run_with no-cache "" OFF
run_with cache 2GiB ON
CACHED=$(du -sb "$WORK/cache/segment-cache" | cut -f1)
BUCKET=$(curl -fsS "http://127.0.0.1:$S3_PORT/bench?list-type=2&prefix=cache/segments/" | python3 -c 'import re,sys; print(sum(int(n) for n in re.findall(r"<Size>(\d+)</Size>", sys.stdin.read())))')
rm -rf "$WORK/cache/segment-cache"
start_fabrik "$WORK/cache" "$(free_port)"
for entry in "${QUERIES[@]}"; do
  IFS='|' read -r name sql _ <<<"$entry"
  COLD[$name]=$(time_once "$sql")
done
stop_pid "$FABRIK_PID"

echo "$POINTS points, segments in moto's S3 ($BUCKET bytes; the cache held $CACHED), $RUNS timed runs per query (median / best, ms)"
printf '  %-26s %18s %18s %12s %10s\n' query "no cache" "segment cache" "cold cache" speed-up
for entry in "${QUERIES[@]}"; do
  IFS='|' read -r name _ _ <<<"$entry"
  read -r om ob _ <<<"${OFF[$name]}"
  read -r cm cb _ <<<"${ON[$name]}"
  ratio=$(python3 -c "print(f'{$om/$cm:.2f}x')")
  printf '  %-26s %8s / %-7s %8s / %-7s %12s %10s\n' "$name" "$om" "$ob" "$cm" "$cb" "${COLD[$name]}" "$ratio"
done
echo "speed-up = no-cache median / cache median; cold = first run after a restart with the cache emptied"
