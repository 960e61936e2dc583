#!/usr/bin/env bash
# Builds in release mode and runs every benchmark on loopback, in one run:
# raw TCP (the ceiling), one Noise+Yamux stream, ChaChaPoly alone, handshakes,
# ping, memory, pubsub on 20 nodes, then /perf/1.0.0 against py-libp2p.
# Usage: Benchmarks/run.sh [MiB per throughput run, default 256]
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product p2pchat >/dev/null
swift build -c release --product p2pbench >/dev/null
"$(swift build -c release --show-bin-path)/p2pbench" "$@"
Benchmarks/perf-compare.sh "${1:-256}"
