#!/usr/bin/env bash
# py-libp2p 0.8.1 to py-libp2p /perf/1.0.0 on loopback, for each PerfService
# write_block_size (the same size on both ends: the listener's PerfService and the
# dialing client's), to find the block size at which py-libp2p goes fastest.
# Sizes are visited in alternating rounds (every size once per round), so a busy
# machine slows them all alike; each figure is the median of the rounds, range beside.
# With P2PCHAT_BIN (a release p2pchat) it also measures, for each size, a Swift client
# against the py listener and the py client against a Swift perf-server.
# Usage: Benchmarks/py-perf-sweep.sh [MiB per run, default 32] [rounds, default 3]
# Environment: P2PCHAT_VENV (default .venv-interop), PY_BLOCK_SIZES (bytes, space-separated),
# P2PCHAT_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/lib.sh
mib=${1:-32}
rounds=${2:-3}
sizes=${PY_BLOCK_SIZES:-4096 8192 16384 32768 65536 131072 262144 524288 1048576}
py_venv
bench_init

# One listener per block size.
for size in $sizes; do py_listen "$work/server-$size" "$size" 3600; done
py_listeners_started
bin=${P2PCHAT_BIN:-}
if [ -n "$bin" ]; then
    "$bin" perf-server --listen /ip4/127.0.0.1/tcp/0 >"$work/swift-server" 2>/dev/null &
    pids+=($!)
    wait_for "$work/swift-server" "Listening on" || true
    swift_addr=$(listening_address "$work/swift-server")
fi
for size in $sizes; do wait_for "$work/server-$size" listening 300 || true; done
addr() { py_listen_address "$work/server-$1"; }
bytes=$((mib * 1024 * 1024))

Benchmarks/machine.sh
echo "py-libp2p -> py-libp2p /perf/1.0.0 on loopback, $mib MiB per run, $rounds alternating rounds"
for round in $(seq "$rounds"); do
    for size in $sizes; do
        a=$(addr "$size")
        "$py" "$peer" dial "$a" perf --upload "$bytes" --block-size "$size" --timeout 600 | py_mb_per_s >>"$work/up-$size"
        "$py" "$peer" dial "$a" perf --download "$bytes" --block-size "$size" --timeout 600 | py_mb_per_s >>"$work/down-$size"
        if [ -n "$bin" ]; then
            "$bin" perf "$a" --upload "$bytes" --download 0 --json | mb_per_s upload_bytes_per_second >>"$work/s2p-up-$size"
            "$bin" perf "$a" --upload 0 --download "$bytes" --json | mb_per_s download_bytes_per_second >>"$work/s2p-down-$size"
            "$py" "$peer" dial "$swift_addr" perf --upload "$bytes" --block-size "$size" --timeout 600 | py_mb_per_s >>"$work/p2s-up-$size"
            "$py" "$peer" dial "$swift_addr" perf --download "$bytes" --block-size "$size" --timeout 600 | py_mb_per_s >>"$work/p2s-down-$size"
        fi
    done
    echo "  round $round of $rounds done" >&2
done
summary() { sort -g "$1" | awk '{ v[NR] = $1 } END { printf "%7.1f (%.1f-%.1f)", v[int((NR + 1) / 2)], v[1], v[NR] }'; }
table() {
    echo "$1"
    printf '  %-12s %-24s %-24s\n' "block size" "upload MB/s" "download MB/s"
    for size in $sizes; do
        printf '  %-12s %-24s %-24s\n' "$((size / 1024)) KiB" "$(summary "$work/$2up-$size")" "$(summary "$work/$2down-$size")"
    done
}
table "py-libp2p -> py-libp2p" ""
if [ -n "$bin" ]; then
    table "Swift -> py-libp2p (the size is the py server's)" s2p-
    table "py-libp2p -> Swift (the size is the py client's)" p2s-
fi
