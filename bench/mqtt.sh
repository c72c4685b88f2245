#!/usr/bin/env bash
# MQTT benchmarks (issue 3): Fabrik's endpoint end to end into the store, and the same load
# against Mosquitto alone in the same run, then idle connections and memory.
# Usage: bench/mqtt.sh [connections] [messages] [idle connections]
# Env: FABRIK_BIN (default target/release/fabrik), MOSQUITTO (default /usr/sbin/mosquitto).
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-1000}; messages=${2:-200000}; idle=${3:-50000}
bin=${FABRIK_BIN:-${CARGO_TARGET_DIR:-target}/release/fabrik}
mosq=${MOSQUITTO:-/usr/sbin/mosquitto}
work=$(mktemp -d /tmp/fabrik-mqtt-bench.XXXX)
token=bench-token-$$
# Each side needs a descriptor per connection: raise the limit as far as the machine allows.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
max_fds=$(ulimit -n)
if [ "$max_fds" != unlimited ] && [ "$idle" -gt $((max_fds - 1000)) ]; then
  echo "note: open-file limit $max_fds; idle connections capped at $((max_fds - 1000))"
  idle=$((max_fds - 1000))
fi
skip_load=${SKIP_LOAD:-0}
cleanup() { kill -TERM ${fpid:-} ${mpid:-} 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$1/status; }

hp=$(free_port); fp=$(free_port); mp=$(free_port)
FABRIK__STORE__DATA_DIR=$work/data FABRIK__HTTP__LISTEN=127.0.0.1:$hp FABRIK__MQTT__LISTEN=127.0.0.1:$fp \
FABRIK__AUTH__ADMIN_TOKEN=$token FABRIK__MQTT__MAX_CONNECTIONS=$((idle + conns + 100)) FABRIK__MQTT__MAX_QUEUED_MESSAGES=100000 \
FABRIK__LOG__LEVEL=warn "$bin" run > "$work/fabrik.log" 2>&1 &
fpid=$!
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n' "$mp" > "$work/mosquitto.conf"
"$mosq" -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
mpid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$hp/ready" >/dev/null && break; sleep 0.2; done
sleep 1
echo "fabrik idle RSS: $(rss_mib $fpid) MiB; mosquitto idle RSS: $(rss_mib $mpid) MiB"

for qos in $([ "$skip_load" = 1 ] || echo 0 1); do
  echo "== QoS $qos, $conns connections, $messages messages"
  echo "-- Fabrik, end to end into the store (no subscriber: every message a queryable row)"
  "$bin" bench mqtt --broker 127.0.0.1:$fp --connections "$conns" --messages "$messages" --qos $qos \
    --username admin --password "$token" --verify-store \
    --url http://127.0.0.1:$hp --token "$token"
  echo "-- Fabrik as a broker (stored as well; subscriber on devices/+/telemetry)"
  "$bin" bench mqtt --broker 127.0.0.1:$fp --connections "$conns" --messages "$messages" --qos $qos \
    --username admin --password "$token" --subscribe --verify-store \
    --url http://127.0.0.1:$hp --token "$token"
  echo "-- Mosquitto (broker only; subscriber on devices/+/telemetry)"
  "$bin" bench mqtt --broker 127.0.0.1:$mp --connections "$conns" --messages "$messages" --qos $qos --subscribe
done
echo "fabrik RSS after load: $(rss_mib $fpid) MiB"

echo "== $idle idle connections (keepalive 60 s)"
for target in fabrik mosquitto; do
  if [ $target = fabrik ]; then port=$fp; pid=$fpid; creds=(admin "$token"); else port=$mp; pid=$mpid; creds=(); fi
  before=$(rss_mib $pid)
  python3 bench/mqtt_idle.py 127.0.0.1 $port "$idle" 40 "${creds[@]}" > "$work/idle-$target.log" 2>&1 &
  ipid=$!
  for _ in $(seq 1 600); do grep -q connected "$work/idle-$target.log" && break; sleep 0.5; done
  sleep 5
  after=$(rss_mib $pid)
  echo "$target: $(grep -E 'connected|Error|error' "$work/idle-$target.log" | head -2); RSS $before -> $after MiB" \
    "($(python3 -c "print(round(($after-$before)*1024*1024/$idle))") bytes per connection)"
  kill $ipid 2>/dev/null || true; wait $ipid 2>/dev/null || true
  sleep 2
done
