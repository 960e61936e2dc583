#!/usr/bin/env bash
# Ping under a flood, RUNS times (issue 26: at most 3x idle in 10 of 10):
# `p2pbench ping` per run (a fresh process: idle ping, then ping while another
# stream of the same connection sends flat out), one line per run with the
# ratio of the loaded p50 to the idle median, then how many runs held.
# With --full, each run is the whole `p2pbench` (the ping comes after the
# throughput runs, on a connection that has carried them) and takes minutes.
# Usage: [P2PCHAT_BIN_DIR=dir] Benchmarks/ping-under-flood.sh [RUNS, default 10] [--full]
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/lib.sh
runs=${1:-10}
mode=${2:-ping}
release_products p2pbench p2pchat
Benchmarks/machine.sh
bench_init
held=0
printf '%-4s %10s %10s %10s %12s %7s %s\n' run "idle µs" "p50 µs" "p99 µs" "flood MB/s" ratio load
for run in $(seq "$runs"); do
    if [ "$mode" = --full ]; then
        "$bin/p2pbench" --no-pubsub >"$work/out" 2>&1
    else
        "$bin/p2pbench" ping >"$work/out" 2>&1
    fi
    figure() { sed -n "s/^$1 *\([0-9.]*\).*/\1/p" "$work/out" | head -1; }
    idle=$(figure 'ping round trip (median of 200)')
    p50=$(figure '  under a flooding stream, p50 of 200')
    p99=$(figure '  under a flooding stream, p99 of 200')
    flood=$(figure '  the flooding stream meanwhile')
    load=$(sed -n 's/^p2pbench: load average after: \([0-9.]*\).*/\1/p' "$work/out")
    ratio=$(awk -v a="$p50" -v b="$idle" 'BEGIN { printf "%.2f", a / b }')
    awk -v r="$ratio" 'BEGIN { exit !(r <= 3) }' && held=$((held + 1))
    printf '%-4s %10s %10s %10s %12s %7s %s\n' "$run" "$idle" "$p50" "$p99" "$flood" "$ratio" "$load"
done
echo "p50 under the flood at most 3x idle in $held of $runs runs"
