#!/usr/bin/env bash
# Join queries (decision 0089): the cost of the rule that makes joins yield to the runtime.
#   bench/joins.sh [RUNS]
# Loads 1,000,000 rows (10 devices × 100,000 seconds) into table `j` of one Fabrik, runs each
# join once to warm up and RUNS times (default 5) timed over HTTP, and prints every time in ms
# (sorted) with the answer. Compare two builds by giving each as FABRIK_BIN.
source "$(dirname "$0")/lib.sh"
RUNS=${1:-5}

build_fabrik
python3 - "$WORK" <<'PY'
import sys
work = sys.argv[1]
for part in range(10):
    with open(f"{work}/join.{part}.lp", "w") as f:
        for t in range(part * 10_000, (part + 1) * 10_000):
            for d in range(10):
                f.write(f"j,d=dev{d} v={(t * 7 + d) % 1000} {t}000000000\n")
PY
start_fabrik "$WORK/fabrik" "$(free_port)"
for part in "$WORK"/join.*.lp; do
  curl -sf -H "Authorization: Bearer bench-token" --data-binary "@$part" \
    "$FABRIK_URL/api/v1/write?precision=ns" -o /dev/null
done

timed() { # sql -> "ms answer"
  python3 - "$FABRIK_URL" "$1" <<'PY'
import json, sys, time, urllib.request
url, sql = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url + "/api/v1/query", data=json.dumps({"sql": sql}).encode(),
    headers={"Authorization": "Bearer bench-token", "Content-Type": "application/json"})
start = time.perf_counter()
body = urllib.request.urlopen(request, timeout=600).read()
print(f"{(time.perf_counter() - start) * 1000:.0f} {json.loads(body)[0]}")
PY
}

for sql in \
  "SELECT count(*) AS n, sum(a.v - b.v) AS s FROM j a JOIN j b ON a.time = b.time" \
  "SELECT count(*) AS n FROM j a JOIN j b ON a.d = b.d AND a.time = b.time"; do
  timed "$sql" >/dev/null
  times=()
  for _ in $(seq "$RUNS"); do
    read -r ms answer < <(timed "$sql")
    times+=("$ms")
  done
  echo "$sql: $(printf '%s\n' "${times[@]}" | sort -n | tr '\n' ' ')ms; answer $answer"
done
