#!/usr/bin/env bash
# What traces cost on the request path (decision 0054): the same small API request, sent
# back to back over keep-alive connections, against a release `fabrik run` with traces off and
# with traces on but every trace sampled out (spans made, none sent: the layer's own cost), and
# with traces on (every span kept and sent to an OTLP receiver, tests/peers/otlp_receiver.py,
# which parses them in Python on the same machine).
#   bench/traces.sh [REQUESTS] [ROUNDS]
# Needs Python with opentelemetry-proto (FABRIK_PYTHON, as .ci/run sets up). Rounds alternate
# off, sampled out and on; prints requests/s per round and the spans the receiver took.
source "$(dirname "$0")/lib.sh"
REQUESTS=${1:-20000}
ROUNDS=${2:-3}
PYTHON="${FABRIK_PYTHON:-$HOME/.cache/fabrik-venv/bin/python}"
build_fabrik

OTLP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PYTHON" "$ROOT/crates/fabrik/tests/peers/otlp_receiver.py" "$OTLP_PORT" "$WORK/spans.jsonl" &
PIDS+=($!)

load() { # url -> requests/s of REQUESTS GET /api/v1/devices on 2 keep-alive connections
  python3 - "$1" "$REQUESTS" <<'PY'
import http.client, sys, threading, time, urllib.parse
url, total = urllib.parse.urlparse(sys.argv[1]), int(sys.argv[2])
def worker(n):
    c = http.client.HTTPConnection(url.hostname, url.port)
    for _ in range(n):
        c.request("GET", "/api/v1/devices", headers={"Authorization": "Bearer bench-token-0123456789"})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=worker, args=(total // 2,)) for _ in range(2)]
start = time.perf_counter()
for t in threads: t.start()
for t in threads: t.join()
print(f"{total / (time.perf_counter() - start):.0f}")
PY
}

run_round() { # traces: off|sampled-out|on
  local data="$WORK/data-$1" port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  rm -rf "$data"
  local endpoint="" ratio=1
  [ "$1" != off ] && endpoint="http://127.0.0.1:$OTLP_PORT"
  [ "$1" = sampled-out ] && ratio=0
  FABRIK__STORE__DATA_DIR="$data" FABRIK__HTTP__LISTEN="127.0.0.1:$port" FABRIK__MQTT__LISTEN=127.0.0.1:0 \
    FABRIK__AUTH__ADMIN_TOKEN=bench-token-0123456789 FABRIK__TRACES__OTLP_ENDPOINT="$endpoint" FABRIK__TRACES__SAMPLE_RATIO="$ratio" \
    FABRIK_LOG=warn "$FABRIK" run >/dev/null 2>&1 &
  local pid=$!
  wait_http "http://127.0.0.1:$port/ready"
  load "http://127.0.0.1:$port" >/dev/null # warm-up
  printf 'traces %-11s %s requests/s\n' "$1" "$(load "http://127.0.0.1:$port")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for _ in $(seq 1 "$ROUNDS"); do
  run_round off
  run_round sampled-out
  run_round on
done
echo "spans received: $(wc -l < "$WORK/spans.jsonl"), refused: $(grep -c '"error"' "$WORK/spans.jsonl" || true)"
