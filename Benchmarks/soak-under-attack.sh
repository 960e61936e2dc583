#!/usr/bin/env bash
# Soak under attack (issue 25): 5 chats, each publishing a line every 2 s,
# while `p2pbench attack` runs each of issue 25's attacks in turn against one
# of them (the target: --dht-server, --accept-files, --metrics). Per attack:
# the lines sent during it and how many reached every other chat (none may be
# lost), the target's resident memory before, at its peak and after, its
# pings answered, and the load average. Root: the chats and the attacker run
# in two network namespaces of their own, on addresses of 10.99.0.0/24, so the
# per-address shares apply (loopback addresses are exempt from them); nothing
# leaves the namespaces.
# Usage: Benchmarks/soak-under-attack.sh [MINUTES PER ATTACK, default 2] [ATTACK...]
# ATTACKs: those of `p2pbench attack --help` (default all, most valuable first).
# SOAK_WARMUP, SOAK_GAP and SOAK_SETTLE (seconds, default 20, 15 and 10) set the
# warm-up, the pause after each attack and the wait for the last lines; P2PCHAT_BIN_DIR a directory of prebuilt p2pchat and
# p2pbench. Exits 1 when a line was lost or a ping failed.
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/lib.sh
minutes=${1:-2}
shift || true
attacks=("$@")
[ ${#attacks[@]} -gt 0 ] || attacks=(handshakes streams connections providers lines files dcutr pubsub metrics)
seconds=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
warmup=${SOAK_WARMUP:-20}
gap=${SOAK_GAP:-15}
chats=5
release_products p2pchat p2pbench
bench_init
trap 'exit 143' TERM INT  # the cleanup (bench_cleanup, on EXIT) also when stopped
# Two namespaces joined by a veth pair: the chats' ($chat_ns: 10.99.0.1 on the
# veth, the chats at 10.99.0.10-14 on its loopback device) and the attacker's
# ($attacker_ns: 10.99.0.2, and its sources 10.99.0.100-131). The attacker's
# connections thus come only from its own addresses (a dial the library
# retries from a fresh port leaves from 10.99.0.2), and the pings from the
# target's own address, which no attacker shares.
chat_ns="soak$$"
attacker_ns="soak$$a"
shaped_link "$chat_ns" "$attacker_ns" 10.99.0 none
for last in $(seq 10 $((9 + chats))); do ip -n "$chat_ns" addr add "10.99.0.$last/32" dev lo; done
for last in $(seq 100 131); do ip -n "$attacker_ns" addr add "10.99.0.$last/24" dev "vb$$"; done
in_ns() { ip netns exec "$chat_ns" "$@"; }

start_chat() {  # $1: slot; $2...: extra arguments
    local slot=$1
    shift
    mkfifo "$work/in$slot"
    # ip netns exec execs the chat: $! is the chat's pid.
    ip netns exec "$chat_ns" "$bin/p2pchat" lobby --ephemeral --no-mdns --json --listen "/ip4/10.99.0.$((10 + slot))/tcp/0" "$@" \
        <"$work/in$slot" >"$work/out$slot" 2>"$work/err$slot" &
    pids+=($!)
    chat_pid[$slot]=$!
    # A line every 2 s, numbered; the count sent so far is kept in sent$slot.
    (n=0; while sleep 2; do n=$((n + 1)); echo "soak $slot $n"; echo "$n" >"$work/sent$slot"; done) >"$work/in$slot" &
    pids+=($!)
    echo 0 >"$work/sent$slot"
    wait_for "$work/out$slot" '"event":"listening"' 200
}

address_of() {
    local peer addr
    peer=$(sed -n 's/.*"event":"local_peer","peer":"\([^"]*\)".*/\1/p' "$work/out$1" | head -1)
    addr=$(sed -n 's/.*"addr":"\(\/ip4\/10\.99\.0\.[0-9]*\/tcp\/[0-9]*\)".*"event":"listening".*/\1/p' "$work/out$1" | head -1)
    echo "$addr/p2p/$peer"
}

# The real chat process (ip netns exec execs it, so the pid is the chat's).
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/${chat_pid[0]}/status"; }
# A ping from a fresh identity (its source address is the target's own, as the kernel picks for a local address).
ping_target() {  # $1: where its failure goes
    in_ns timeout 15 "$bin/p2pchat" ping -c 1 --timeout 5 --ephemeral "$target" >"$work/ping" 2>&1 && return 0
    echo "$(date -u +%T) $(tail -1 "$work/ping")" >>"$1"
    return 1
}

declare -A chat_pid
mkdir "$work/downloads"
start_chat 0 --dht-server --accept-files --download-dir "$work/downloads" --metrics /ip4/10.99.0.10/tcp/0
target=$(address_of 0)
metrics=$(sed -n 's/.*"addr":"\([^"]*\)".*"event":"metrics".*/\1/p; s/.*"event":"metrics".*"addr":"\([^"]*\)".*/\1/p' "$work/out0" | head -1)
start_chat 1 --connect "$target"
for slot in $(seq 2 $((chats - 1))); do start_chat "$slot" --connect "$target" --connect "$(address_of 1)"; done
for _ in $(seq 300); do
    [ "$(grep -c '"event":"joined"' "$work/out0" || true)" -ge $((chats - 1)) ] && break
    sleep 0.1
done
echo "soak under attack: $chats chats, a line every 2 s each; ${seconds} s per attack against $target"
sleep "$warmup"

# Per attack: the numbers each chat sent during it, RSS, pings, load.
declare -A first last rss_before rss_peak rss_after pings_ok pings_all load summary
for attack in "${attacks[@]}"; do
    for slot in $(seq 0 $((chats - 1))); do first[$attack,$slot]=$(( $(cat "$work/sent$slot") + 1 )); done
    rss_before[$attack]=$(rss_kib)
    peak=${rss_before[$attack]}
    metrics_target=$target
    [ "$attack" = metrics ] && metrics_target=$metrics
    ip netns exec "$attacker_ns" "$bin/p2pbench" attack "$attack" "$metrics_target" --seconds "$seconds" --from 10.99.0.100 \
        >"$work/attack-$attack" 2>&1 &
    attacker=$!
    pids+=($attacker)
    ok=0
    all=0
    while kill -0 "$attacker" 2>/dev/null; do
        all=$((all + 1))
        if ping_target "$work/ping-failures-$attack"; then ok=$((ok + 1)); fi
        now=$(rss_kib)
        [ "$now" -gt "$peak" ] && peak=$now
        sleep 3
    done
    wait "$attacker" || echo "attack $attack exited with $?" >>"$work/attack-$attack"
    for slot in $(seq 0 $((chats - 1))); do last[$attack,$slot]=$(cat "$work/sent$slot"); done
    read -r load[$attack] _ </proc/loadavg
    sleep "$gap"
    # Still answering once the attack is over.
    all=$((all + 1))
    if ping_target "$work/ping-failures-$attack"; then ok=$((ok + 1)); fi
    rss_peak[$attack]=$peak
    rss_after[$attack]=$(rss_kib)
    pings_ok[$attack]=$ok
    pings_all[$attack]=$all
    summary[$attack]=$(grep '^attack ' "$work/attack-$attack" || tail -3 "$work/attack-$attack")
done
sleep "${SOAK_SETTLE:-10}"  # the last lines' delivery

# Every line a chat sent during an attack must have reached every other chat.
for slot in $(seq 0 $((chats - 1))); do
    sed -n 's/.*"text":"\(soak [0-9]* [0-9]*\)".*/\1/p' "$work/out$slot" | sort -u >"$work/received$slot"
done
failed=0
echo
printf '%-12s %-22s %-28s %-10s %-6s\n' attack "lines sent/delivered" "target RSS MiB before/peak/after" pings load
for attack in "${attacks[@]}"; do
    sent=0
    delivered=0
    for receiver in $(seq 0 $((chats - 1))); do
        : >"$work/expected"
        for sender in $(seq 0 $((chats - 1))); do
            [ "$sender" = "$receiver" ] && continue
            for n in $(seq "${first[$attack,$sender]}" "${last[$attack,$sender]}"); do echo "soak $sender $n" >>"$work/expected"; done
        done
        sent=$((sent + $(wc -l <"$work/expected")))
        delivered=$((delivered + $(grep -cxFf "$work/received$receiver" "$work/expected" || true)))
    done
    mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
    printf '%-12s %-22s %-28s %-10s %-6s\n' "$attack" "$sent/$delivered" \
        "$(mib "${rss_before[$attack]}")/$(mib "${rss_peak[$attack]}")/$(mib "${rss_after[$attack]}")" \
        "${pings_ok[$attack]}/${pings_all[$attack]}" "${load[$attack]}"
    [ "$sent" -eq "$delivered" ] && [ "${pings_ok[$attack]}" -eq "${pings_all[$attack]}" ] || failed=1
done
echo "(lines: each chat's lines during the attack, counted once per other chat that must receive them)"
echo
for attack in "${attacks[@]}"; do
    echo "${summary[$attack]}"
    [ -f "$work/ping-failures-$attack" ] && sed 's/^/  ping failed at /' "$work/ping-failures-$attack"
done
echo "what the target's limits refused or closed, by reason:"
sed -n 's/.*"count":\([0-9]*\).*"reason":"\([^"]*\)".*/\1 \2/p' "$work/out0" |
    awk '{ n = $1; $1 = ""; total[substr($0, 2)] += n } END { for (r in total) printf "  %7d  %s\n", total[r], r }'
if [ "$failed" = 1 ]; then
    echo "the target's last limits events:"
    grep '"event":"limits"' "$work/out0" | tail -20
fi
exit "$failed"
