#!/usr/bin/env bash
# What message traces cost on the MQTT ingest path (decision 0077): the same QoS 1 load from
# `fabrik bench mqtt` (1,000 connections, acknowledged = stored), end to end into the store,
# against a fresh release `fabrik run` per round, in four modes:
#   3.1.1        publishers speak MQTT 3.1.1 (the baseline of docs/benchmarks.md), traces on
#   5            MQTT 5 publishes without user properties, traces on
#   5+tp/off     every MQTT 5 publish carries a sampled traceparent, `[traces]` unset
#   5+tp/on      every publish carries one, traces on and sent to an OTLP receiver
#                (tests/peers/otlp_receiver.py, Python on the same machine, which parses every
#                span); Fabrik starts at most 1,000 message spans a second and counts the rest
#                as dropped
#   5+tp/sink    as 5+tp/on, but the spans go to a sink that answers without parsing them, so
#                the receiver's own work on these two cores is left out
#   bench/message_traces.sh [MESSAGES] [ROUNDS] [CONNECTIONS]
# Needs Python with opentelemetry-proto (FABRIK_PYTHON, as .ci/run sets up). Rounds alternate
# the modes; prints msg/s per round, and for traced rounds the spans Fabrik dropped over its
# cap and the spans the receiver took.
source "$(dirname "$0")/lib.sh"
MESSAGES=${1:-200000}
ROUNDS=${2:-3}
CONNECTIONS=${3:-1000}
PYTHON="${FABRIK_PYTHON:-$HOME/.cache/fabrik-venv/bin/python}"
TOKEN=bench-token-0123456789
build_fabrik
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

wait_port() { # port: until something accepts connections on it
  for _ in $(seq 1 100); do
    python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; return 1
}
OTLP_PORT=$(free_port)
"$PYTHON" "$ROOT/crates/fabrik/tests/peers/otlp_receiver.py" "$OTLP_PORT" "$WORK/spans.jsonl" &
PIDS+=($!)
wait_port "$OTLP_PORT"
touch "$WORK/spans.jsonl"
SINK_PORT=$(free_port)
python3 - "$SINK_PORT" <<'PY' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)  # an empty ExportTraceServiceResponse: full success
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
PIDS+=($!)
wait_port "$SINK_PORT"

message_spans() { grep -c '"messaging.system": "mqtt"' "$WORK/spans.jsonl" || true; }

run_round() { # mode: 3.1.1 | 5 | 5+tp/off | 5+tp/on | 5+tp/sink
  local mode=$1 data="$WORK/data" http mqtt endpoint="http://127.0.0.1:$OTLP_PORT" flags=()
  http=$(free_port); mqtt=$(free_port)
  rm -rf "$data"
  case $mode in
    3.1.1) ;;
    5) flags=(--mqtt-version 5) ;;
    5+tp/off) flags=(--mqtt-version 5 --traceparent); endpoint="" ;;
    5+tp/on) flags=(--mqtt-version 5 --traceparent) ;;
    5+tp/sink) flags=(--mqtt-version 5 --traceparent); endpoint="http://127.0.0.1:$SINK_PORT" ;;
  esac
  FABRIK__STORE__DATA_DIR="$data" FABRIK__HTTP__LISTEN="127.0.0.1:$http" FABRIK__MQTT__LISTEN="127.0.0.1:$mqtt" \
    FABRIK__AUTH__ADMIN_TOKEN=$TOKEN FABRIK__MQTT__MAX_CONNECTIONS=$((CONNECTIONS + 100)) \
    FABRIK__TRACES__OTLP_ENDPOINT="$endpoint" FABRIK_LOG=warn "$FABRIK" run >"$WORK/fabrik.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid") # stopped on exit if the round fails half-way
  wait_http "http://127.0.0.1:$http/ready"
  local before
  before=$(message_spans)
  local result
  result=$("$FABRIK" bench mqtt --broker "127.0.0.1:$mqtt" --connections "$CONNECTIONS" --messages "$MESSAGES" \
    --qos 1 "${flags[@]}" --username admin --password "$TOKEN" --verify-store \
    --url "http://127.0.0.1:$http" --token "$TOKEN" --json)
  sleep 6 # the exporter's batch interval: let the round's spans arrive
  local dropped
  dropped=$(curl -fsS "http://127.0.0.1:$http/metrics" |
    awk '/^fabrik_trace_spans_dropped_total\{reason="message_rate"\}/ {print $2}')
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  unset 'PIDS[${#PIDS[@]}-1]' # this round's Fabrik, stopped
  local received=$(($(message_spans) - before))
  [ "$mode" = 5+tp/sink ] && received="n/a (the sink keeps none)"
  python3 - "$mode" "$result" "${dropped:-0}" "$received" <<'PY'
import json, sys
mode, r, dropped, spans = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"{mode:9} stored {r['stored']}/{r['messages']} at {r['stored_rate']:,.0f} msg/s end to end; "
      f"PUBACK p50 {r['puback_p50_ms']:.1f} ms p99 {r['puback_p99_ms']:.1f} ms; errors {r['errors']}; "
      f"spans over the cap {dropped}, received {spans}")
PY
}

# MODES (space-separated) picks the modes; all five by default.
for _ in $(seq 1 "$ROUNDS"); do
  for mode in ${MODES:-3.1.1 5 5+tp/off 5+tp/on 5+tp/sink}; do run_round "$mode"; done
done
refused=$(grep -c '"error"' "$WORK/spans.jsonl" || true)
echo "receiver refused $refused batches"
