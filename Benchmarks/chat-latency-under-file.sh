#!/usr/bin/env bash
# Chat latency while a file moves over the same connection, across a slow
# link: two chats in network namespaces joined by a veth pair shaped to RATE
# each way (tc tbf, at most 20 ms queued). A offers a SIZE MiB file, B fetches
# it with /get; A sends a line every 100 ms carrying its send time, idle for
# 10 s and then while the file moves; B's receive times (its --json `ts`) give
# each line's latency. Needs root (ip netns, tc). P2PCHAT_BIN_DIR: release binaries
# to use instead of building them.
# Usage: Benchmarks/chat-latency-under-file.sh [RATE, default 50mbit] [SIZE MiB, default 64]
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/lib.sh
rate=${1:-50mbit}
size=${2:-64}
release_products p2pchat
ns_a="p2pcfl-a-$$"
ns_b="p2pcfl-b-$$"
bench_init
shaped_link "$ns_a" "$ns_b" 10.78.0 "$rate"
head -c "$((size * 1024 * 1024))" /dev/urandom >"$work/payload.bin"
mkfifo "$work/a.in" "$work/b.in"
ip netns exec "$ns_a" "$bin/p2pchat" lobby --ephemeral --no-mdns --json --listen /ip4/10.78.0.1/tcp/4001 \
    <"$work/a.in" >"$work/a.out" 2>/dev/null &
pids+=($!)
exec 3>"$work/a.in"
wait_for "$work/a.out" '"local_peer"' || true
peer=$(sed -n 's/.*"event":"local_peer","peer":"\([^"]*\)".*/\1/p' "$work/a.out" | head -1)
ip netns exec "$ns_b" "$bin/p2pchat" lobby --ephemeral --no-mdns --json --listen /ip4/10.78.0.2/tcp/4001 \
    --connect "/ip4/10.78.0.1/tcp/4001/p2p/$peer" --download-dir "$work/dl" <"$work/b.in" >"$work/b.out" 2>/dev/null &
pids+=($!)
exec 4>"$work/b.in"
for _ in $(seq 200); do grep -q '"joined"' "$work/a.out" && grep -q '"joined"' "$work/b.out" && break; sleep 0.1; done
send_lines() {  # $1: phase name, $2: seconds (or "until-done")
    local phase=$1 until=$2 start
    start=$(date +%s)
    while true; do
        echo "lat $phase $(date +%s%3N)" >&3
        sleep 0.1
        if [ "$until" = "until-done" ]; then
            grep -q '"file_done"\|"file_failed"' "$work/b.out" && break
            [ $(( $(date +%s) - start )) -gt 600 ] && break
        else
            [ $(( $(date +%s) - start )) -ge "$until" ] && break
        fi
    done
}
echo "link: $rate each way (tbf, at most 20 ms queued; none: unshaped veth); file: $size MiB from A to B; a line every 100 ms from A"
send_lines idle 10
echo "/send $work/payload.bin" >&3
wait_for "$work/b.out" '"file_offer"' || true
echo "/get 1" >&4
transfer_start=$(date +%s%3N)
send_lines file until-done
transfer_ms=$(( $(date +%s%3N) - transfer_start ))
sleep 1
python3 - "$work/b.out" "$transfer_ms" "$size" <<'PY'
import json, sys, datetime
lat = {"idle": [], "file": []}
done = None
for line in open(sys.argv[1]):
    try:
        event = json.loads(line)
    except ValueError:
        continue
    if event.get("event") == "file_done":
        done = event
    if event.get("event") != "message" or not event.get("text", "").startswith("lat "):
        continue
    _, phase, sent = event["text"].split()
    received = datetime.datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    lat[phase].append(received.timestamp() * 1000 - int(sent))
def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")
for phase, values in lat.items():
    print(f"chat line latency, {phase:4}: p50 {pct(values, 0.5):7.1f} ms  p99 {pct(values, 0.99):7.1f} ms  ({len(values)} lines)")
seconds = int(sys.argv[2]) / 1000
print(f"file: {'saved' if done else 'NOT saved'}, {int(sys.argv[3])} MiB in {seconds:.1f} s ({int(sys.argv[3]) * 1.048576 / seconds:.2f} MB/s)")
PY
