#!/usr/bin/env bash
# Hole punching in the NAT testbed, N times: a public segment (203.0.113.0/24)
# with `p2pchat relay`, two homes behind routers doing NAT (nftables
# masquerade, new inbound connections dropped). Each run starts two fresh
# chats (new keys, new listening ports): home2 reserves on the relay, home1
# dials home2's circuit address, home2 hole punches. Reports the success rate,
# the time from the relayed connection to the direct one (p50/p99) and the
# DCUtR exchange alone, and why each failure failed. Needs root, nft.
# Usage: Benchmarks/holepunch.sh [RUNS, default 50] [debug|release, default debug]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
mode=${2:-debug}
swift build -c "$mode" --product p2pchat >/dev/null
bin="$(swift build -c "$mode" --show-bin-path)/p2pchat"
p="hp$$"
cleanup() {
    for n in home1 home2 router1 router2 relay pub; do ip netns del "$p-$n" 2>/dev/null || true; done
}
trap cleanup EXIT

ip netns add "$p-pub"
ip -n "$p-pub" link add br0 type bridge
ip -n "$p-pub" link set br0 up
attach() {  # namespace, bridge port, address
    ip link add name wan netns "$1" type veth peer name "$2" netns "$p-pub"
    ip -n "$1" link set wan up
    ip -n "$p-pub" link set "$2" up master br0
    ip -n "$1" addr add "$3" dev wan
}
ip netns add "$p-relay"
ip -n "$p-relay" link set lo up
attach "$p-relay" relay 203.0.113.10/24
for i in 1 2; do
    r="$p-router$i" h="$p-home$i"
    ip netns add "$r"
    ip netns add "$h"
    ip -n "$h" link set lo up
    attach "$r" "router$i" "203.0.113.$i/24"
    ip link add name lan netns "$r" type veth peer name eth0 netns "$h"
    ip -n "$r" link set lan up
    ip -n "$h" link set eth0 up
    ip -n "$r" addr add "10.0.$i.1/24" dev lan
    ip -n "$h" addr add "10.0.$i.2/24" dev eth0
    ip -n "$h" route add default via "10.0.$i.1"
    ip netns exec "$r" sysctl -q -w net.ipv4.ip_forward=1
    ip netns exec "$r" /usr/sbin/nft -f - <<'NFT'
table ip nat {
  chain postrouting { type nat hook postrouting priority 100; oifname "wan" masquerade; }
}
table inet filter {
  chain input { type filter hook input priority 0; iifname "wan" ct state new drop; }
  chain forward { type filter hook forward priority 0; iifname "wan" ct state new drop; }
}
NFT
done

python3 - "$bin" "$p" "$runs" <<'PY'
import json, subprocess, sys, threading, time

binary, prefix, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])

class Node:
    """A p2pchat process; each JSON line of its stdout is kept with its arrival time."""

    def __init__(self, namespace, args):
        self.lines = []
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", f"{prefix}-{namespace}", binary] + args,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        for line in self.process.stdout:
            try:
                self.lines.append((time.monotonic(), json.loads(line)))
            except ValueError:
                pass

    def wait(self, predicate, seconds):
        """The first event satisfying predicate and when it arrived, or (None, None)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for at, event in list(self.lines):
                if predicate(event):
                    return event, at
            time.sleep(0.01)
        return None, None

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()

relay = Node("relay", ["relay", "--json", "--ephemeral", "--listen", "/ip4/0.0.0.0/tcp/4001", "--autonat-dial-timeout", "2"])
listening, _ = relay.wait(lambda e: e.get("event") == "listening" and "203.0.113" in e["addr"], 30)
if not listening:
    sys.exit("the relay did not start")
relay_addr = listening["addr"]

totals, exchanges, failures = [], [], []
for run in range(runs):
    port = 4100 + run  # fresh ports: no conntrack state left from the previous run
    common = ["lobby", "--json", "--ephemeral", "--no-mdns", "--listen", f"/ip4/0.0.0.0/tcp/{port}", "--relay", relay_addr]
    home2 = Node("home2", common)
    home1 = None
    try:
        local, _ = home2.wait(lambda e: e.get("event") == "local_peer", 20)
        reserved, _ = home2.wait(lambda e: e.get("event") == "listening" and "p2p-circuit" in e["addr"], 30)
        if not (local and reserved):
            failures.append((run, "home2 got no reservation"))
            continue
        home1 = Node("home1", common + ["--connect", f"{relay_addr}/p2p-circuit/p2p/{local['peer']}"])
        connected, relayed_at = home2.wait(lambda e: e.get("event") == "connected" and "p2p-circuit" in e.get("addr", ""), 30)
        if not connected:
            failures.append((run, "no relayed connection"))
            continue
        upgraded, direct_at = home2.wait(
            lambda e: e.get("event") == "connection_upgraded" or "hole punch" in e.get("message", ""), 40)
        if upgraded and upgraded.get("event") == "connection_upgraded":
            totals.append((direct_at - relayed_at) * 1000)
            exchanges.append(float(upgraded["elapsed_ms"]))
            print(f"run {run + 1}: direct at {upgraded['addr']} after {totals[-1]:.0f} ms (DCUtR {exchanges[-1]:.0f} ms, attempt {upgraded['attempt']})", flush=True)
        else:
            failures.append((run, upgraded.get("message") if upgraded else "no outcome within 40 s"))
            print(f"run {run + 1}: FAILED {failures[-1][1]}", flush=True)
    finally:
        for node in (home1, home2):
            if node:
                node.stop()
relay.stop()

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")

print(f"\nhole punches: {len(totals)}/{runs} succeeded ({100 * len(totals) / runs:.0f}%)")
print(f"relayed -> direct (as home2 saw it): p50 {pct(totals, 50):.0f} ms, p99 {pct(totals, 99):.0f} ms")
print(f"DCUtR exchange to direct connection: p50 {pct(exchanges, 50):.1f} ms, p99 {pct(exchanges, 99):.1f} ms")
for run, why in failures:
    print(f"failure in run {run + 1}: {why}")
PY
