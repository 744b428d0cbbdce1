#!/usr/bin/env bash
# Serve one disk image through ImageioProxy: bash scripts/run.sh IMAGE [SIZE] [FORMAT] [--Section:Key=value ...]
#
# Creates IMAGE (raw, or qcow2 for *.qcow2 or FORMAT=qcow2) with SIZE if it does not exist, starts its own
# qemu-nbd on a private unix socket and the proxy on http://localhost:54322 (plain HTTP unless
# --Tls:CertFile=... --Tls:KeyFile=... are given), installs a read-write ticket and prints the URL and
# curl commands. Ctrl-C flushes, then stops the proxy and qemu-nbd.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: bash scripts/run.sh IMAGE [SIZE] [raw|qcow2] [--Section:Key=value ...]" >&2
  exit 2
fi
image="$1"; shift
args=()
if [[ $# -gt 0 && "$1" != --* ]]; then args+=(--size "$1"); shift; fi
if [[ $# -gt 0 && "$1" != --* ]]; then args+=(--format "$1"); shift; fi

if ! command -v qemu-nbd >/dev/null || ! command -v qemu-img >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "Installing qemu-utils (qemu-nbd, qemu-img)..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-utils >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-utils >&2; }
  else
    echo "qemu-nbd and qemu-img are needed: install qemu-utils (sudo apt-get install qemu-utils)" >&2
    exit 1
  fi
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/artifacts/run"
echo "Publishing ImageioProxy to $out..." >&2
dotnet publish "$root/src/ImageioProxy/ImageioProxy.csproj" -c Release -o "$out" --nologo -v quiet >&2

exec "$out/ImageioProxy" serve-image "$image" "${args[@]}" "$@"
