#!/usr/bin/env bash
# Ping latency on a connection that a /perf upload keeps full, across a slow
# link: two network namespaces joined by a veth pair shaped to RATE each way
# (tc tbf, with a queue of at most 20 ms). Runs the client with the kernel's
# unsent-queue limit (TCP_NOTSENT_LOWAT, our default 128 KiB) and without it
# (P2PBENCH_LOWAT=0). Needs root (ip netns, tc).
# Usage: Benchmarks/latency-under-load.sh [RATE, default 50mbit]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-50mbit}
swift build -c release --product p2pchat >/dev/null
swift build -c release --product p2pbench >/dev/null
bin="$(swift build -c release --show-bin-path)"
ns_a="p2plat-a-$$"
ns_b="p2plat-b-$$"
work=$(mktemp -d)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    ip netns del "$ns_a" 2>/dev/null || true
    ip netns del "$ns_b" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns_a"
ip netns add "$ns_b"
ip link add "va$$" netns "$ns_a" type veth peer name "vb$$" netns "$ns_b"
ip -n "$ns_a" addr add 10.77.0.1/24 dev "va$$"
ip -n "$ns_b" addr add 10.77.0.2/24 dev "vb$$"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "va$$" up
ip -n "$ns_b" link set "vb$$" up
# A link of `rate` each way whose queue holds at most 20 ms of traffic.
ip netns exec "$ns_a" tc qdisc add dev "va$$" root tbf rate "$rate" burst 32kbit latency 20ms
ip netns exec "$ns_b" tc qdisc add dev "vb$$" root tbf rate "$rate" burst 32kbit latency 20ms

ip netns exec "$ns_b" "$bin/p2pchat" perf-server --listen /ip4/10.77.0.2/tcp/4001 >"$work/server" 2>/dev/null &
server_pid=$!
for _ in $(seq 100); do grep -q "Listening on" "$work/server" && break; sleep 0.1; done
address=$(sed -n 's/^Listening on //p' "$work/server" | head -1)
[ -n "$address" ] || { echo "perf-server did not start" >&2; exit 1; }

echo "link: $rate each way (tbf, at most 20 ms queued); the client uploads with /perf while pinging"
echo "-- with TCP_NOTSENT_LOWAT 128 KiB (default)"
ip netns exec "$ns_a" timeout 120 "$bin/p2pbench" ping-under-load "$address"
echo "-- without (the kernel's default, no limit)"
P2PBENCH_LOWAT=0 ip netns exec "$ns_a" timeout 120 "$bin/p2pbench" ping-under-load "$address"
