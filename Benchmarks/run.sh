#!/usr/bin/env bash
# Builds in release mode and runs every benchmark on loopback, in one run:
# raw TCP (the ceiling), one Noise+Yamux stream, ChaChaPoly alone, handshakes,
# ping, memory, pubsub on 20 nodes, then /perf/1.0.0 against py-libp2p; the
# machine (CPU, AES-NI/AVX2/AVX-512, OpenSSL's AEAD speeds) printed first.
# Usage: Benchmarks/run.sh [MiB per throughput run, default 256]
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/lib.sh
load_average before
trap 'load_average after' EXIT
swift build -c release --product p2pchat >/dev/null
swift build -c release --product p2pbench >/dev/null
bin_path="$(swift build -c release --show-bin-path)"
Benchmarks/machine.sh
"$bin_path/p2pbench" "$@"
P2PCHAT_MACHINE_PRINTED=1 P2PCHAT_BIN="$bin_path/p2pchat" Benchmarks/perf-compare.sh "${1:-256}"
