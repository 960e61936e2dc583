#!/usr/bin/env bash
# /perf/1.0.0 throughput across processes on loopback: Swift and py-libp2p 0.8.1
# as client and server in every pairing, in one run.
# py-libp2p runs as fast as its own API allows: its PerfService (served, and the
# client's) writes and reads PY_BLOCK_SIZE-byte blocks, 1 MiB unless set: the
# fastest of 4 KiB to 1 MiB in Benchmarks/py-perf-sweep.sh (py-libp2p's default,
# 64 KiB, moved about 3/4 as much py to py; 128 KiB to 1 MiB were within noise).
# Usage: Benchmarks/perf-compare.sh [MiB for Swift-only runs, default 256] [MiB for runs with py, default 32]
# Environment: P2PCHAT_BIN (a release p2pchat to use instead of building one),
# P2PCHAT_VENV (the py-libp2p venv, default .venv-interop, created if missing),
# PY_BLOCK_SIZE (bytes), P2PCHAT_MACHINE_PRINTED=1 (skip Benchmarks/machine.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/lib.sh
swift_mib=${1:-256}
py_mib=${2:-32}
py_block=${PY_BLOCK_SIZE:-1048576}
bin=${P2PCHAT_BIN:-}
if [ -z "$bin" ]; then
    swift build -c release --product p2pchat >/dev/null
    bin="$(swift build -c release --show-bin-path)/p2pchat"
fi
py_venv create
bench_init

"$bin" perf-server --listen /ip4/127.0.0.1/tcp/0 >"$work/swift-server" 2>/dev/null &
pids+=($!)
py_listen "$work/py-server" "$py_block" 600
py_listeners_started
wait_for "$work/swift-server" "Listening on" || true
wait_for "$work/py-server" listening || true
swift_addr=$(listening_address "$work/swift-server")
py_addr=$(py_listen_address "$work/py-server")

row() { printf '%-44s %10s MB/s\n' "$1" "$2"; }
bytes() { echo $(($1 * 1024 * 1024)); }

[ "${P2PCHAT_MACHINE_PRINTED:-}" = 1 ] || Benchmarks/machine.sh
echo "perf (/perf/1.0.0) on loopback, separate processes; Swift-only runs move $swift_mib MiB, runs with py $py_mib MiB;"
echo "py-libp2p's PerfService writes $((py_block / 1024)) KiB blocks (PY_BLOCK_SIZE)"
row "Swift -> Swift upload" "$("$bin" perf "$swift_addr" --upload "$(bytes "$swift_mib")" --download 0 --json | mb_per_s upload_bytes_per_second)"
row "Swift -> Swift download" "$("$bin" perf "$swift_addr" --upload 0 --download "$(bytes "$swift_mib")" --json | mb_per_s download_bytes_per_second)"
row "Swift -> py-libp2p upload" "$("$bin" perf "$py_addr" --upload "$(bytes "$py_mib")" --download 0 --json | mb_per_s upload_bytes_per_second)"
row "Swift -> py-libp2p download" "$("$bin" perf "$py_addr" --upload 0 --download "$(bytes "$py_mib")" --json | mb_per_s download_bytes_per_second)"
row "py-libp2p -> Swift upload" "$("$py" "$peer" dial "$swift_addr" perf --upload "$(bytes "$py_mib")" --block-size "$py_block" --timeout 300 | py_mb_per_s)"
row "py-libp2p -> Swift download" "$("$py" "$peer" dial "$swift_addr" perf --download "$(bytes "$py_mib")" --block-size "$py_block" --timeout 300 | py_mb_per_s)"
row "py-libp2p -> py-libp2p upload" "$("$py" "$peer" dial "$py_addr" perf --upload "$(bytes "$py_mib")" --block-size "$py_block" --timeout 300 | py_mb_per_s)"
row "py-libp2p -> py-libp2p download" "$("$py" "$peer" dial "$py_addr" perf --download "$(bytes "$py_mib")" --block-size "$py_block" --timeout 300 | py_mb_per_s)"
