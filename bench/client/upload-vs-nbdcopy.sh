#!/usr/bin/env bash
# The CLI client (ImageioProxy upload) vs nbdcopy, uploading the same virt-v2v-like raw image into a fresh
# sparse raw target served by qemu-nbd on tmpfs. The client goes through the proxy (serve-image: qemu-nbd
# --shared=8 --persistent, cache fallback to writeback on tmpfs); nbdcopy writes to an identical qemu-nbd
# directly. Pairs alternate who goes first; each run is checked with qemu-img compare; the figure is the
# median of per-pair ratios (client throughput / nbdcopy throughput).
#
#   bash bench/client/upload-vs-nbdcopy.sh [SIZE_GIB=2] [PAIRS=5] [DIR=/dev/shm/clientbench]
set -euo pipefail
size_gib=${1:-2}
pairs=${2:-5}
dir=${3:-/dev/shm/clientbench}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
proxy=$repo/src/ImageioProxy/bin/Release/net10.0/ImageioProxy
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432

[ -x "$proxy" ] || dotnet build "$repo/src/ImageioProxy" -c Release --nologo -v q
rm -rf "$dir" && mkdir -p "$dir"
src=$dir/source.raw
trap 'rm -rf "$dir"' EXIT

# virt-v2v-like: regions of 64 KiB to 8 MiB, half random data, a quarter written zeroes, a quarter holes.
python3 - "$src" "$size_gib" <<'PY'
import os, random, sys
path, size = sys.argv[1], int(sys.argv[2]) << 30
r = random.Random(2026)
zeros = bytes(8 << 20)
with open(path, "wb") as f:
    f.truncate(size)
    offset = 0
    while offset < size:
        length = min(size - offset, r.randint(1, 128) * 65536)
        kind = r.random()
        if kind < 0.5:
            f.seek(offset); f.write(os.urandom(length))
        elif kind < 0.75:
            f.seek(offset); f.write(zeros[:length])
        offset += length
PY
echo "source: $src, $(du -h --apparent-size "$src" | cut -f1) ($(du -h "$src" | cut -f1) allocated)"

now() { date +%s.%N; }

# Prints the seconds the client took.
run_client() {
  local target=$dir/target-client.raw log=$dir/serve.log
  rm -f "$target"; truncate -s "${size_gib}G" "$target"
  "$proxy" serve-image "$target" --Remote:Port=0 --Remote:Host=127.0.0.1 --Logging:LogLevel:Default=Warning >"$log" 2>&1 &
  local server=$!
  local url=
  for _ in $(seq 200); do
    url=$(grep -o 'http://[^ ]*/images/[^ ]*' "$log" | head -n1 || true)
    [ -n "$url" ] && break
    sleep 0.05
  done
  [ -n "$url" ] || { cat "$log" >&2; kill $server; exit 1; }
  local start end
  start=$(now)
  "$proxy" upload "$src" "$url" --output none
  end=$(now)
  kill -TERM $server; wait $server || true  # (a background job ignores SIGINT)
  qemu-img compare -q -f raw -F raw "$src" "$target" || { echo "client: target differs" >&2; exit 1; }
  echo "$end - $start" | bc -l
}

run_nbdcopy() {
  local target=$dir/target-nbdcopy.raw sock=$dir/nbdcopy.sock
  rm -f "$target" "$sock"; truncate -s "${size_gib}G" "$target"
  qemu-nbd --persistent --shared=8 --cache=writeback --format=raw --socket="$sock" "$target" &
  local server=$!
  for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
  local start end
  start=$(now)
  nbdcopy --flush "$src" "nbd+unix:///?socket=$sock"
  end=$(now)
  kill $server; wait $server || true
  qemu-img compare -q -f raw -F raw "$src" "$target" || { echo "nbdcopy: target differs" >&2; exit 1; }
  echo "$end - $start" | bc -l
}

# Untimed warm-up of each (page cache, JIT, qemu-nbd).
run_client >/dev/null
run_nbdcopy >/dev/null

ratios=() ours=() theirs=()
for pair in $(seq "$pairs"); do
  if [ $((pair % 2)) -eq 1 ]; then c=$(run_client); n=$(run_nbdcopy); else n=$(run_nbdcopy); c=$(run_client); fi
  ratio=$(echo "$n / $c" | bc -l)
  printf 'pair %d: client %.3f s (%.3f GiB/s), nbdcopy %.3f s (%.3f GiB/s), ratio %.3f\n' \
    "$pair" "$c" "$(echo "$size_gib / $c" | bc -l)" "$n" "$(echo "$size_gib / $n" | bc -l)" "$ratio"
  ratios+=("$ratio") ours+=("$(echo "$size_gib / $c" | bc -l)") theirs+=("$(echo "$size_gib / $n" | bc -l)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf 'client median %.3f GiB/s, nbdcopy median %.3f GiB/s, median of per-pair ratios (client/nbdcopy throughput) %.3f\n' \
  "$(median "${ours[@]}")" "$(median "${theirs[@]}")" "$(median "${ratios[@]}")"
printf 'per-pair ratios: %s\n' "$(printf '%.2f ' "${ratios[@]}")"
