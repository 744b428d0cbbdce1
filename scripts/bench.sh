#!/usr/bin/env bash
# The performance suite of issue #6: builds in Release, runs bench/ImageioProxy.Bench and rewrites its
# section of docs/benchmarks.md (between the BEGIN/END markers; the rest of the file is left alone).
#
#   bash scripts/bench.sh [OPTIONS]
#
# Options go to the suite (bench/ImageioProxy.Bench/Program.cs lists them), e.g.
#   --pairs N            rounds per scenario (default 3)       --only S1,S3     some scenarios only
#   --size-gib N         image size of S1-S6 (default 2)       --with-16g       add S8 at 16 GiB (slow)
#   --proxy-arg --Http:PoolBlockSize=0                          run the proxy with another setting
#   --proxy-env DOTNET_gcServer=1                               ... or another environment
#   --markdown FILE      where to write (default docs/benchmarks.md; --markdown '' writes nothing)
#   --client-wmem BYTES  net.core.wmem_default during the run (root; restored after): S4's curl socket buffer
#   --qemu-tunables T    GLIBC_TUNABLES of every qemu-nbd, scenario and baseline (default: the issue's
#                        glibc.malloc.mmap_threshold=33554432; docs/operations.md, "qemu-nbd's allocator")
# The default run takes about 8 minutes on 2 cores. Every figure is a ratio to a baseline run in the
# same process, alternated with the scenario; tests never assert speed.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

missing=()
for entry in qemu-nbd:qemu-utils nbdcopy:libnbd-bin curl:curl wrk:wrk openssl:openssl cmp:diffutils; do
  command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y "${missing[@]}" >/dev/null
  else
    echo "bench.sh: missing tools; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

markdown=docs/benchmarks.md
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --markdown) markdown=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -n "$markdown" ]; then args+=(--markdown "$markdown"); fi

dotnet build bench/ImageioProxy.Bench -c Release -nologo -v quiet -clp:ErrorsOnly 1>&2
exec dotnet bench/ImageioProxy.Bench/bin/Release/net10.0/ImageioProxy.Bench.dll \
  --proxy src/ImageioProxy/bin/Release/net10.0/ImageioProxy "${args[@]}"
