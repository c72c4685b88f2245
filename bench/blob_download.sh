#!/usr/bin/env bash
# Downloads of a blob on the disk (decision 0063): `GET /api/v1/blobs/{id}` of one MIB-MiB blob
# (default 256) of random bytes, RUNS times (default 3), with curl on 127.0.0.1. Prints each
# run's seconds and MB/s; each download is checked against the stored bytes.
#   bench/blob_download.sh [MIB] [RUNS]
source "$(dirname "$0")/lib.sh"
MIB=${1:-256}
RUNS=${2:-3}
build_fabrik
export FABRIK__HTTP__MAX_BODY_SIZE="$((MIB * 2))MiB"
AUTH=(-H "Authorization: Bearer bench-token")
start_fabrik "$WORK/data" "$(free_port)"
store_random_blob "$MIB"
printf '| run | seconds | MB/s |\n|---|---|---|\n'
for run in $(seq 1 "$RUNS"); do
  read -r seconds speed < <(curl -fsS "${AUTH[@]}" -o "$WORK/read" -w '%{time_total} %{speed_download}\n' "$FABRIK_URL/api/v1/blobs/$ID")
  [ "$(sha256sum "$WORK/read" | cut -d' ' -f1)" = "$SUM" ] || { echo "run $run got other bytes" >&2; exit 1; }
  python3 -c "print(f'| $run | {$seconds:.3f} | {$speed/1e6:.0f} |')"
done
