#!/usr/bin/env bash
# Soak: 20 chat nodes on loopback for MINUTES minutes, 5 stable and 15 that
# churn (one is stopped and a fresh one, with a new identity, started every
# few seconds), every node publishing a line every 2 s. The stable nodes'
# resident memory, open descriptors and threads are sampled after a warm-up
# and at the end, and their memory every 5 minutes: nothing may grow without
# bound.
# Usage: Benchmarks/soak.sh [MINUTES, default 30] [CHURN SECONDS, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/lib.sh
load_average before
minutes=${1:-30}
churn=${2:-3}
swift build -c release --product p2pchat >/dev/null
bin="$(swift build -c release --show-bin-path)/p2pchat"
work=$(mktemp -d)
declare -A pid writer
cleanup() {
    for key in "${!writer[@]}"; do kill "${writer[$key]}" 2>/dev/null || true; done
    for key in "${!pid[@]}"; do kill "${pid[$key]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
    load_average after
}
trap cleanup EXIT

start_node() {  # $1: slot; $2...: extra arguments
    local slot=$1
    shift
    rm -f "$work/in$slot"
    mkfifo "$work/in$slot"
    "$bin" lobby --ephemeral --no-mdns --json --listen /ip4/127.0.0.1/tcp/0 "$@" \
        <"$work/in$slot" >"$work/out$slot" 2>/dev/null &
    pid[$slot]=$!
    # A line every 2 s (the writer holds the fifo open; its end ends the chat).
    (while sleep 2; do echo "soak line from $slot at $(date +%s)"; done) >"$work/in$slot" &
    writer[$slot]=$!
    for _ in $(seq 100); do grep -q '"listening"' "$work/out$slot" 2>/dev/null && break; sleep 0.1; done
}

address_of() {
    local peer addr
    peer=$(sed -n 's/.*"event":"local_peer","peer":"\([^"]*\)".*/\1/p' "$work/out$1" | head -1)
    addr=$(sed -n 's/.*"addr":"\(\/ip4\/127.0.0.1\/tcp\/[0-9]*\)".*"event":"listening".*/\1/p' "$work/out$1" | head -1)
    echo "$addr/p2p/$peer"
}

stop_node() {
    kill "${writer[$1]}" 2>/dev/null || true
    wait "${pid[$1]}" 2>/dev/null || true
}

sample() {  # pid -> "rss_kib fds threads"
    local p=$1
    echo "$(awk '/VmRSS/ {print $2}' /proc/$p/status) $(ls /proc/$p/fd | wc -l) $(awk '/Threads/ {print $2}' /proc/$p/status)"
}

start_node 0
seeds=("$(address_of 0)")
for slot in 1 2 3 4; do
    start_node "$slot" --connect "${seeds[0]}"
    seeds+=("$(address_of "$slot")")
done
for slot in $(seq 5 19); do
    start_node "$slot" --connect "${seeds[$((RANDOM % 5))]}" --connect "${seeds[$((RANDOM % 5))]}"
done
echo "soak: 20 nodes (5 stable, 15 churning, one every ${churn} s), a line every 2 s each, ${minutes} min"
sleep 30
declare -A first
for slot in 0 1 2 3 4; do first[$slot]=$(sample "${pid[$slot]}"); done
deadline=$(( $(date +%s) + minutes * 60 ))
restarts=0
next_sample=$(( $(date +%s) + 300 ))
# Resident memory of the stable nodes every 5 minutes: bounded stores fill,
# then it must level off.
echo "minute  RSS KiB of the stable nodes"
while [ "$(date +%s)" -lt "$deadline" ]; do
    if [ "$(date +%s)" -ge "$next_sample" ]; then
        line=""
        for slot in 0 1 2 3 4; do line="$line $(sample "${pid[$slot]}" | cut -d' ' -f1)"; done
        printf '%-7s%s\n' "$(( (next_sample - deadline) / 60 + minutes ))" "$line"
        next_sample=$(( next_sample + 300 ))
    fi
    slot=$(( 5 + RANDOM % 15 ))
    stop_node "$slot"
    start_node "$slot" --connect "${seeds[$((RANDOM % 5))]}" --connect "${seeds[$((RANDOM % 5))]}"
    restarts=$((restarts + 1))
    sleep "$churn"
done
echo "restarts: $restarts"
printf '%-6s %-22s %-22s %-18s %s\n' node "RSS KiB start -> end" "descriptors" "threads" "lines received"
for slot in 0 1 2 3 4; do
    read -r rss0 fd0 th0 <<<"${first[$slot]}"
    read -r rss1 fd1 th1 <<<"$(sample "${pid[$slot]}")"
    lines=$(grep -c '"event":"message"' "$work/out$slot" || true)
    printf '%-6s %-22s %-22s %-18s %s\n' "$slot" "$rss0 -> $rss1" "$fd0 -> $fd1" "$th0 -> $th1" "$lines"
done
