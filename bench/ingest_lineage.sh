#!/usr/bin/env bash
# What OpenLineage ingest jobs cost MQTT ingest (decision 0082): the same QoS 1 load from
# `fabrik bench mqtt` (CONNECTIONS connections, acknowledged = stored), end to end into the
# store, against a fresh release `fabrik run` per round, in two modes:
#   off       `[openlineage]` unset: the ingest path counts nothing
#   lineage   `[openlineage] file` set, `running_interval = "1s"`: every stored batch is counted
#             per source and table for `ingest.mqtt`, which reports a RUNNING each second
#   bench/ingest_lineage.sh [MESSAGES] [ROUNDS] [CONNECTIONS]
# Rounds alternate the modes; prints msg/s per round and, for `lineage`, the rows the last
# `ingest.mqtt` event of the round counted (it must equal the messages stored: one row each,
# plus as many `_raw` rows).
source "$(dirname "$0")/lib.sh"
MESSAGES=${1:-400000}
ROUNDS=${2:-5}
CONNECTIONS=${3:-1000}
TOKEN=bench-token-0123456789
build_fabrik
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

run_round() { # mode: off | lineage
  local mode=$1 data="$WORK/data" http mqtt
  http=$(free_port); mqtt=$(free_port)
  rm -rf "$data"
  local file=""
  [ "$mode" = lineage ] && file="lineage.jsonl"
  FABRIK__STORE__DATA_DIR="$data" FABRIK__HTTP__LISTEN="127.0.0.1:$http" FABRIK__MQTT__LISTEN="127.0.0.1:$mqtt" \
    FABRIK__AUTH__ADMIN_TOKEN=$TOKEN FABRIK__MQTT__MAX_CONNECTIONS=$((CONNECTIONS + 100)) \
    FABRIK__OPENLINEAGE__FILE="$file" FABRIK__OPENLINEAGE__RUNNING_INTERVAL=1s \
    FABRIK_LOG=warn "$FABRIK" run >"$WORK/fabrik.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid") # stopped on exit if the round fails half-way
  wait_http "http://127.0.0.1:$http/ready"
  local result
  result=$("$FABRIK" bench mqtt --broker "127.0.0.1:$mqtt" --connections "$CONNECTIONS" --messages "$MESSAGES" \
    --qos 1 --username admin --password "$TOKEN" --verify-store \
    --url "http://127.0.0.1:$http" --token "$TOKEN" --json)
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  unset 'PIDS[${#PIDS[@]}-1]' # this round's Fabrik, stopped
  python3 - "$mode" "$result" "$data/lineage.jsonl" <<'PY'
import json, os, sys
mode, r, path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
counted = "n/a"
if mode == "lineage":
    last = None
    if os.path.exists(path):
        for line in open(path):
            event = json.loads(line)
            if event["job"]["name"] == "ingest.mqtt":
                last = event
    counted = "no ingest.mqtt event" if last is None else ", ".join(
        f"{o['name']} {o['outputFacets']['outputStatistics']['rowCount']}" for o in last["outputs"]
    ) + f" (last event {last['eventType']})"
# A round whose rows were not all stored in time has no rate: say so rather than stop the bench.
rate = "no rate (not all stored)" if r.get("stored_rate") is None else f"{r['stored_rate']:,.0f} msg/s"
print(f"{mode:8} stored {r['stored']}/{r['messages']} at {rate} end to end; "
      f"PUBACK p50 {r['puback_p50_ms']:.1f} ms p99 {r['puback_p99_ms']:.1f} ms; errors {r['errors']}; "
      f"lineage counted: {counted}")
PY
}

for _ in $(seq 1 "$ROUNDS"); do
  for mode in off lineage; do run_round "$mode"; done
done
