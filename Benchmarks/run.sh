#!/usr/bin/env bash
# Builds in release mode and runs the foundation benchmarks on loopback.
# Usage: Benchmarks/run.sh [MiB per throughput run, default 256]
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product p2pchat >/dev/null
swift build -c release --product p2pbench >/dev/null
exec "$(swift build -c release --show-bin-path)/p2pbench" "$@"
