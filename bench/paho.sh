#!/usr/bin/env bash
# Eclipse Paho MQTT interoperability tests (paho.mqtt.testing, interoperability/) against a
# `fabrik run` in the documented open-broker setting. Not part of `.ci/run`: the test suite is
# fetched separately (EPL/EDL), e.g.
#   git clone https://github.com/eclipse/paho.mqtt.testing /tmp/paho.mqtt.testing
# Usage: bench/paho.sh /tmp/paho.mqtt.testing/interoperability [fabrik binary]
# The tests expect the broker on localhost:1883, so that port must be free.
set -euo pipefail
interop=$(realpath "${1:?path to paho.mqtt.testing/interoperability}")
bin=${2:-${FABRIK_BIN:-target/release/fabrik}}
work=$(mktemp -d /tmp/fabrik-paho.XXXX)
cat > "$work/fabrik.toml" <<'TOML'
[mqtt]
# Paho's tests expect an open broker: anonymous clients and an allow-all rule (Fabrik logs a
# loud warning at start). Never use this in production.
allow_anonymous = true
# test_server_keep_alive expects the server to cap keepalive at 60 s.
max_keep_alive = "60s"
# test_subscribe_failure accepts only 0x80 in the SUBACK (Fabrik's default is 0x87).
subscribe_denied_reason = "unspecified"

[[mqtt.acl]]
action = "all"
topic = "#"

# test_subscribe_failure subscribes to a topic it expects to be refused.
[[mqtt.acl]]
action = "subscribe"
topic = "test/nosubscribe"
effect = "deny"
TOML
FABRIK__HTTP__LISTEN=127.0.0.1:0 FABRIK__STORE__DATA_DIR="$work/data" FABRIK__MQTT__LISTEN=127.0.0.1:1883 \
  "$bin" run --config "$work/fabrik.toml" > "$work/fabrik.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q "Fabrik is ready" "$work/fabrik.log" && break; sleep 0.2; done
python=${PYTHON:-python3}
cd "$interop"
echo "== MQTT 3.1.1: client_test.py (one process)"
timeout 300 "$python" client_test.py 2>&1 | grep -E "^(Ran|OK|FAILED)" || true
echo "== MQTT 5.0: client_test5.py (each test in its own process)"
tests=$(grep -oE "def (test_[a-z0-9_]+)" client_test5.py | awk '{print $2}')
pass=0; fail=0
for t in $tests; do
  if out=$(timeout 120 "$python" client_test5.py "Test.$t" 2>&1) && grep -q "^OK" <<<"$out"; then
    pass=$((pass + 1)); printf '  %-34s ok\n' "$t"
  else
    fail=$((fail + 1)); printf '  %-34s FAILED\n' "$t"
  fi
done
echo "MQTT 5.0: $pass passed, $fail failed"
