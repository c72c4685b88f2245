#!/usr/bin/env bash
# WAV clips over MQTT (decision 0020): how fast `fabrik run` stores clips that devices publish
# (each one a blob fsynced before its rows), and what a telemetry message waits behind them.
# Usage: bench/clips.sh [clips] [publishers]   Env: FABRIK_BIN, FABRIK_PYTHON (with paho-mqtt).
source "$(dirname "$0")/lib.sh"
clips=${1:-2000}; publishers=${2:-8}
py=${FABRIK_PYTHON:-$HOME/.cache/fabrik-venv/bin/python}
build_fabrik
hp=$(free_port); mp=$(free_port); token=bench-token-$$
FABRIK__STORE__DATA_DIR=$WORK/data FABRIK__HTTP__LISTEN=127.0.0.1:$hp FABRIK__MQTT__LISTEN=127.0.0.1:$mp \
FABRIK__AUTH__ADMIN_TOKEN=$token FABRIK__LOG__LEVEL=warn "$FABRIK" run > "$WORK/fabrik.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$hp/ready"
"$py" "$ROOT/bench/clips_pub.py" 127.0.0.1 "$mp" "$token" "$clips" "$publishers"
stored=$(curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"sql":"SELECT count(*) AS n FROM clips"}' "http://127.0.0.1:$hp/api/v1/query")
echo "rows in clips: $stored"
