#!/usr/bin/env bash
# Gossipsub v1.1 under Sybil attack at scale (issue 14): real routers in the
# in-process simulated network (virtual time, per-link delays), 20% Sybils, each
# attack of SybilAttack with scoring on and off. Prints a markdown table:
# delivery to honest nodes, the worst honest node (the target for the eclipse),
# p50/p99 delivery latency in heartbeats, every RPC byte per delivery, the Sybils'
# share of honest mesh slots when measuring starts and at the end, and links
# closed for staying graylisted. Scenario: SybilScenario.report in
# Tests/Protocols/PubSubTests/SybilSimulation.swift.
# Usage: Benchmarks/sybil.sh [NODES, default 1000] [release|debug, default release]
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/lib.sh
load_average before
trap 'load_average after' EXIT
nodes=${1:-1000}
mode=${2:-release}
# @testable import needs -enable-testing in release.
swift build -c "$mode" --build-tests -Xswiftc -enable-testing >/dev/null
bin="$(swift build -c "$mode" --show-bin-path)/p2pchatPackageTests.xctest"
Benchmarks/machine.sh
echo "nodes: $nodes ($mode build)"
start=$(date +%s)
P2PCHAT_SYBIL_NODES=$nodes "$bin" PubSubTests.SybilAttackTests/testReport 2>&1 | grep --line-buffered -E '^\||error|failed'
echo "took $(($(date +%s) - start)) s"
