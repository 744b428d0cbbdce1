#!/usr/bin/env bash
# Where the CPU goes in S1 and S3, per process: the client (curl or nbdcopy), the proxy, sink or floor, qemu-nbd.
# On two cores these sums bound what each scenario can reach (docs/benchmarks.md, seventh round).
# Each round (the order reverses every other round), with a fresh sparse 2 GiB target on tmpfs (blocks punched out, not recreated):
#   limit      nbdcopy of the source straight into qemu-nbd (S1's and S4's baseline)
#   http       curl PUT to the proxy over plain HTTP (S1), the proxy warmed by one untimed upload first
#   floor-120k the same PUT to splice-floor.c: one C thread splicing the body into qemu-nbd as NBD WRITEs of
#              120 KiB (the proxy's Backend:SpliceRequestSize), no HTTP framework, no runtime
#   floor-1m   the same floor with 1 MiB WRITEs
#   http-1m    S1 to a proxy started with --Backend:SpliceRequestSize=0 (1 MiB NBD WRITEs), warmed the same way
#   tls-sink   curl PUT over HTTPS (HTTP/1.1) to the bench's bare Kestrel sink (S3's ceiling)
#   tls-floor  the same PUT to tls-sink.c: OpenSSL reading the socket itself, no HTTP framework
#   https      curl PUT to the proxy over HTTPS (S3)
# Prints per round and the median per row: wall seconds and CPU-s/GiB of each process.
#
#   bash bench/client/cpu-by-party.sh [ROUNDS=3] [DIR=/dev/shm/partybench]
set -euo pipefail
rounds=${1:-3}
dir=${2:-/dev/shm/partybench}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
proxy=$repo/src/ImageioProxy/bin/Release/net10.0/ImageioProxy
bench=$repo/bench/ImageioProxy.Bench/bin/Release/net10.0/ImageioProxy.Bench
size=$((2 << 30))

missing=()
for tool in qemu-nbd:qemu-utils nbdcopy:libnbd-bin curl:curl gcc:gcc openssl:openssl; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -q && $sudo apt-get install -y -q "${missing[@]}"
fi
dotnet build "$repo/bench/ImageioProxy.Bench" -c Release --nologo -v q -clp:ErrorsOnly >&2

rm -rf "$dir" && mkdir -p "$dir"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
gcc -O2 -o "$dir/tls-sink" "$repo/bench/client/tls-sink.c" -lssl -lcrypto
gcc -O2 -o "$dir/splice-floor" "$repo/bench/client/splice-floor.c"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj /CN=localhost -days 1 2>/dev/null
head -c $size /dev/urandom > "$dir/source.raw"
target=$dir/target.raw
truncate -s $size "$target"

# The suite's qemu-nbd (bench/ImageioProxy.Bench/Servers.cs): same options, same malloc tuning.
GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432 qemu-nbd -f raw --persistent --shared=8 --cache=none --aio=native \
  -k "$dir/nbd.sock" "$target" & qemu=$!; pids+=($qemu)
cat > "$dir/ticket.json" <<EOF
{"uuid":"party","size":$size,"ops":["read","write"],"timeout":3600,"inactivity_timeout":3600,
 "url":"nbd:unix:$dir/nbd.sock","sparse":true,"transfer_id":"party"}
EOF
start_proxy() { # PORT TLS [SETTING...]
  local port=$1 tls=$2; shift 2
  "$proxy" --Remote:Host=localhost --Remote:Port="$port" --Tls:Enable="$tls" --Tls:CertFile="$dir/cert.pem" \
    --Tls:KeyFile="$dir/key.pem" --Local:Socket="$dir/local-$port.sock" --Control:Enable=false \
    --Daemon:TicketFile="$dir/ticket.json" ${PROXY_ARGS:-} "$@" >"$dir/proxy-$port.log" 2>&1 & pids+=($!)
}
start_proxy 18601 false; http_proxy=${pids[-1]}
start_proxy 18602 true; https_proxy=${pids[-1]}
start_proxy 18606 false --Backend:SpliceRequestSize=0; http_1m_proxy=${pids[-1]}
"$bench" sink --port 18603 --cert "$dir/cert.pem" --key "$dir/key.pem" >"$dir/sink.log" 2>&1 & sink=$!; pids+=($sink)
for port in 18601 18602 18603 18606; do
  for _ in $(seq 100); do curl -sk -o /dev/null "https://localhost:$port/" || curl -s -o /dev/null "http://localhost:$port/" && break; sleep 0.1; done
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }       # utime + stime, in 1/100 s
per_gib() { echo "scale=3; $1 * 1073741824 / $size" | bc; }   # CPU-s for the 2 GiB -> CPU-s/GiB
fresh() { fallocate --punch-hole -o 0 -l $size "$target"; }
client() { # COMMAND...: prints "wall cpu" of the command (bash's time includes its children)
  local TIMEFORMAT='%R %U %S' t
  t=$( { time "$@" >/dev/null 2>&1; } 2>&1 )
  read -r wall user sys <<<"$t"
  echo "$wall $(echo "$user + $sys" | bc)"
}
put() { curl -sS --fail -k --http1.1 -X PUT --upload-file "$dir/source.raw" -o /dev/null "$@"; }
results=$dir/results
: > "$results"
row() { # NAME WALL CLIENT SERVER QEMU (CPU-s for 2 GiB)
  local line
  line=$(printf '%-10s wall %6.2f s  client %6s  server %6s  qemu-nbd %6s CPU-s/GiB' "$1" "$2" \
    "$(per_gib "$3")" "$([ "$4" = - ] && echo - || per_gib "$4")" "$([ "$5" = - ] && echo - || per_gib "$5")")
  echo "$line"; echo "$line" >> "$results"
}

run_limit() {
  fresh; local q0; q0=$(ticks $qemu)
  read -r wall cpu < <(client nbdcopy "$dir/source.raw" "nbd+unix:///?socket=$dir/nbd.sock")
  row limit "$wall" "$cpu" - "$(echo "($(ticks $qemu) - $q0) / 100" | bc -l)"
}
run_proxy() { # NAME PROXY_PID URL
  fresh; local q0 p0; q0=$(ticks $qemu); p0=$(ticks "$2")
  read -r wall cpu < <(client put "$3")
  row "$1" "$wall" "$cpu" "$(echo "($(ticks "$2") - $p0) / 100" | bc -l)" "$(echo "($(ticks $qemu) - $q0) / 100" | bc -l)"
}
run_tls_sink() {
  local s0; s0=$(ticks $sink)
  read -r wall cpu < <(client put "https://localhost:18603/")
  row tls-sink "$wall" "$cpu" "$(echo "($(ticks $sink) - $s0) / 100" | bc -l)" -
}
run_http_floor() { # NAME REQUEST_SIZE
  fresh; local q0; q0=$(ticks $qemu)
  "$dir/splice-floor" 18605 "$dir/nbd.sock" "$2" 2>"$dir/floor.txt" & local floor=$!
  for _ in $(seq 100); do ss -Hltn "sport = :18605" | grep -q . && break; sleep 0.05; done # one connection: no probe
  read -r wall cpu < <(client put "http://127.0.0.1:18605/")
  wait $floor
  row "$1" "$wall" "$cpu" "$(awk '/^bytes/ {print $4 + $6}' "$dir/floor.txt")" "$(echo "($(ticks $qemu) - $q0) / 100" | bc -l)"
}
run_tls_floor() {
  "$dir/tls-sink" 18604 "$dir/cert.pem" "$dir/key.pem" 2>"$dir/floor.txt" & local floor=$!
  for _ in $(seq 100); do ss -Hltn "sport = :18604" | grep -q . && break; sleep 0.05; done # it serves one connection: no probe
  read -r wall cpu < <(client put "https://127.0.0.1:18604/")
  wait $floor
  row tls-floor "$wall" "$cpu" "$(awk '/^bytes/ {print $4 + $6}' "$dir/floor.txt")" -
}

fresh; put "http://localhost:18601/images/party"; put "https://localhost:18602/images/party"  # warm-up
put "http://localhost:18606/images/party"
for round in $(seq "$rounds"); do
  echo "round $round"
  # Who comes first after a hole is punched matters on some VMs (freed memory handed back to the host):
  # the order alternates between rounds.
  if [ $((round % 2)) = 1 ]; then
    run_limit; run_proxy http $http_proxy "http://localhost:18601/images/party"
    run_http_floor floor-120k 122880; run_proxy http-1m $http_1m_proxy "http://localhost:18606/images/party"
    run_http_floor floor-1m 1048576
    run_tls_sink; run_tls_floor; run_proxy https $https_proxy "https://localhost:18602/images/party"
  else
    run_proxy https $https_proxy "https://localhost:18602/images/party"; run_tls_floor; run_tls_sink
    run_http_floor floor-1m 1048576; run_proxy http-1m $http_1m_proxy "http://localhost:18606/images/party"
    run_http_floor floor-120k 122880
    run_proxy http $http_proxy "http://localhost:18601/images/party"; run_limit
  fi
done

echo "median of $rounds rounds (CPU-s/GiB):"
for name in limit http floor-120k http-1m floor-1m tls-sink tls-floor https; do
  grep "^$name " "$results" | awk -v n="$name" '
    { w[NR] = $3; c[NR] = $6; s[NR] = $8; q[NR] = $10 }
    function median(a, k,   i, j, t) { for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } return a[int((k + 1) / 2)] }
    END { printf "%-10s wall %6.2f s  client %6s  server %6s  qemu-nbd %6s\n", n, median(w, NR), median(c, NR), median(s, NR), median(q, NR) }'
done
