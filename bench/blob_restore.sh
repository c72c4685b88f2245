#!/usr/bin/env bash
# Reading back an evicted blob (decisions 0062, 0065): the peak memory of `fabrik run` while
# whole GETs of a blob that only the bucket holds (moto's server on 127.0.0.1, from the test
# venv) bring it back to the disk and serve it.
#   bench/blob_restore.sh [MIB] [READERS]
# Stores one MIB-MiB blob (default 256) of random bytes, persists so it reaches the bucket and
# the disk's copy is evicted (`local_blob_limit` 1 MiB), restarts the node so the upload's
# memory is gone, then reads the blob whole with 1 reader; again (evicted again, restarted
# again) with READERS (default 4) at once; and again as one `Range: bytes=0-` read, which is
# what a browser's <audio>/<video> element asks for first (served from the bucket, not copied
# back). Prints, for each, the seconds until every reader had it, how many copies came back
# to the disk (fabrik_blob_restores_total), the resident memory before, and the peak (VmHWM)
# during the reads. Each copy read is checked against the stored bytes.
source "$(dirname "$0")/lib.sh"
MIB=${1:-256}
READERS=${2:-4}

build_fabrik
start_moto
export FABRIK__STORE__OBJECTS__URL="s3://bench/restore" FABRIK__STORE__OBJECTS__LOCAL_BLOB_LIMIT=1MiB
export FABRIK__HTTP__MAX_BODY_SIZE="$((MIB * 2))MiB" FABRIK__STORE__FLUSH_INTERVAL=1h
DATA_DIR="$WORK/data"
PORT=$(free_port)
AUTH=(-H "Authorization: Bearer bench-token")

metric() { curl -fsS "$FABRIK_URL/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
kib() { awk -v f="$1" '$1 == f":" { print $2 }' "/proc/$FABRIK_PID/status"; }
# Persists a new row, which wakes the eviction, and waits for the blob to leave the disk.
evict() {
  local file="$DATA_DIR/blobs/sha256/${SUM:0:2}/${SUM:2}"
  curl -fsS "${AUTH[@]}" --data-binary "keepalive,device=cam-1 n=$RANDOM" "$FABRIK_URL/api/v1/write" >/dev/null
  curl -fsS -XPOST "${AUTH[@]}" "$FABRIK_URL/api/v1/admin/persist" >/dev/null
  for _ in $(seq 1 300); do
    [ -e "$file" ] || return 0
    sleep 0.1
  done
  echo "the blob was not evicted" >&2; return 1
}
restart() { stop_pid "$FABRIK_PID"; start_fabrik "$DATA_DIR" "$PORT"; }

start_fabrik "$DATA_DIR" "$PORT"
store_random_blob "$MIB"

printf '| read | readers | seconds until all had it | copies from the bucket | resident before (MiB) | peak during (MiB) | peak − before (MiB) |\n|---|---|---|---|---|---|---|\n'
for case in "whole 1" "whole $READERS" "range 1"; do
  read -r kind readers <<<"$case"
  range=(); [ "$kind" = range ] && range=(-H "Range: bytes=0-")
  evict
  restart
  before=$(kib VmRSS)
  start=$(date +%s.%N)
  pids=()
  for r in $(seq 1 "$readers"); do
    curl -fsS "${AUTH[@]}" "${range[@]}" -o "$WORK/read.$r" "$FABRIK_URL/api/v1/blobs/$ID" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  end=$(date +%s.%N)
  peak=$(kib VmHWM)
  copies=$(metric fabrik_blob_restores_total); copies=${copies:-0}
  for r in $(seq 1 "$readers"); do
    [ "$(sha256sum "$WORK/read.$r" | cut -d' ' -f1)" = "$SUM" ] || { echo "reader $r got other bytes" >&2; exit 1; }
    rm -f "$WORK/read.$r"
  done
  label="whole"; [ "$kind" = range ] && label='`bytes=0-`'
  python3 -c "print(f'| $label | $readers | {$end - $start:.2f} | $copies | {$before/1024:.0f} | {$peak/1024:.0f} | {($peak - $before)/1024:.0f} |')"
done
