#!/usr/bin/env bash
# Ping latency on a connection that a /perf upload keeps full, across a slow
# link: two network namespaces joined by a veth pair shaped to RATE each way
# (tc tbf, with a queue of at most 20 ms). Runs the client with the kernel's
# unsent-queue limit (TCP_NOTSENT_LOWAT, our default 128 KiB) and without it
# (P2PBENCH_LOWAT=0). Needs root (ip netns, tc). P2PCHAT_BIN_DIR: release binaries
# to use instead of building them.
# Usage: Benchmarks/latency-under-load.sh [RATE, default 50mbit]
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/lib.sh
rate=${1:-50mbit}
release_products p2pchat p2pbench
ns_a="p2plat-a-$$"
ns_b="p2plat-b-$$"
bench_init
shaped_link "$ns_a" "$ns_b" 10.77.0 "$rate"

ip netns exec "$ns_b" "$bin/p2pchat" perf-server --listen /ip4/10.77.0.2/tcp/4001 >"$work/server" 2>/dev/null &
pids+=($!)
wait_for "$work/server" "Listening on" || { echo "perf-server did not start" >&2; exit 1; }
address=$(listening_address "$work/server")

echo "link: $rate each way (tbf, at most 20 ms queued); the client uploads with /perf while pinging"
echo "-- with TCP_NOTSENT_LOWAT 128 KiB (default)"
ip netns exec "$ns_a" timeout 120 "$bin/p2pbench" ping-under-load "$address"
echo "-- without (the kernel's default, no limit)"
P2PBENCH_LOWAT=0 ip netns exec "$ns_a" timeout 120 "$bin/p2pbench" ping-under-load "$address"
