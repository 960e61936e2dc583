#!/usr/bin/env bash
# Direct connections through NAT in the NAT testbed, N times: a public segment
# (203.0.113.0/24) with `p2pchat relay`, two homes behind routers doing NAT
# (nftables masquerade; new inbound connections dropped, or refused with a TCP
# reset). Each run starts fresh peers (new keys, new listening ports). Scenarios:
#   relay      home2 --relay R; home1 dials home2's circuit address; home2 hole punches
#   bootstrap  both homes know only R (--bootstrap): AutoRelay, the DHT, then DCUtR
#   public     home2 --bootstrap R; a public chat beside the relay dials home2's
#              circuit address; home2 dials it back (the unilateral upgrade)
#   py-a       py-libp2p 0.8.1 in home1 dials our home2 through R; we hole punch
#   py-b       py-libp2p 0.8.1 in home2 reserves on R; our home1 dials it; py hole punches
# The homes listen on TCP (tcp), QUIC (quic: the UDP hole punch) or both, as a
# chat does by default (both); the relay listens on both.
# Reports the success rate, the time from start (or from the relayed connection)
# to the direct one (p50/p99), and why each failure failed. Needs root, nft
# (and .venv-interop for py-*: ./scripts/test makes it).
# Usage: [P2PCHAT_BIN=path] Benchmarks/holepunch.sh [RUNS, default 20] [debug|release, default debug]
#          [relay|bootstrap|public|py-a|py-b, default relay] [drop|reset, default drop]
#          [tcp|quic|both, default tcp]
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/lib.sh
load_average before
runs=${1:-20}
mode=${2:-debug}
scenario=${3:-relay}
firewall=${4:-drop}
transports=${5:-tcp}
case $transports in tcp|quic|both) ;; *) echo "transports must be tcp, quic or both" >&2; exit 2 ;; esac
case $firewall in
    drop) refuse='iifname "wan" ct state new drop;' ;;
    reset) refuse='iifname "wan" ct state new meta l4proto tcp reject with tcp reset; iifname "wan" ct state new drop;' ;;
    *) echo "firewall must be drop or reset" >&2; exit 2 ;;
esac
python="$PWD/.venv-interop/bin/python"
# P2PCHAT_BIN: a binary to use instead of building (a copy, so that builds meanwhile do not change it).
if [ -n "${P2PCHAT_BIN:-}" ]; then
    bin=$P2PCHAT_BIN
else
    swift build -c "$mode" --product p2pchat >/dev/null
    bin="$(swift build -c "$mode" --show-bin-path)/p2pchat"
fi
p="hp$$"
cleanup() {
    for n in home1 home2 router1 router2 relay pub; do ip netns del "$p-$n" 2>/dev/null || true; done
    load_average after
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
    ip netns exec "$r" /usr/sbin/nft -f - <<NFT
table ip nat {
  chain postrouting { type nat hook postrouting priority 100; oifname "wan" masquerade; }
}
table inet filter {
  chain input { type filter hook input priority 0; $refuse }
  chain forward { type filter hook forward priority 0; $refuse }
}
NFT
done

python3 - "$bin" "$p" "$runs" "$scenario" "$firewall" "$python" "$PWD/Tests/Interop/py/relay_peer.py" "$transports" <<'PY'
import json, subprocess, sys, threading, time

binary, prefix, runs, scenario, firewall, python, py_script, transports = sys.argv[1:9]
runs = int(runs)

class Node:
    """A p2pchat (or py-libp2p) process; each JSON line of its stdout is kept with its arrival time."""

    def __init__(self, namespace, args, executable=None):
        self.lines = []
        command = [executable, py_script] if executable else [binary]
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", f"{prefix}-{namespace}"] + command + args,
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

def event(name, **fields):
    return lambda e: e.get("event") == name and all(f(e.get(k, "")) for k, f in fields.items())

circuit = lambda a: "p2p-circuit" in a
relay = Node("relay", ["relay", "--json", "--ephemeral", "--listen", "/ip4/0.0.0.0/tcp/4001",
                       "--listen", "/ip4/0.0.0.0/udp/4001/quic-v1", "--autonat-dial-timeout", "2"])
relay_transport = "/quic-v1" if transports == "quic" else "/tcp/"
listening, _ = relay.wait(
    lambda e: e.get("event") == "listening" and "203.0.113" in e["addr"] and relay_transport in e["addr"], 30)
if not listening:
    sys.exit("the relay did not start")
relay_addr = listening["addr"]

def one_run(run):
    """(milliseconds from the relayed connection, or from start, to the direct one; how), or raises with why."""
    port = 4100 + run  # fresh ports: no conntrack state left from the previous run
    listen = {"tcp": [f"/ip4/0.0.0.0/tcp/{port}"], "quic": [f"/ip4/0.0.0.0/udp/{port}/quic-v1"],
              "both": [f"/ip4/0.0.0.0/tcp/{port}", f"/ip4/0.0.0.0/udp/{port}/quic-v1"]}[transports]
    chat = ["lobby", "--json", "--ephemeral", "--no-mdns"] + [a for address in listen for a in ("--listen", address)]
    py = ["--timeout", "90", "--ip", "0.0.0.0", "--port", str(port)]
    nodes = []
    def start(namespace, args, executable=None):
        nodes.append(Node(namespace, args, executable))
        return nodes[-1]
    try:
        if scenario in ("relay", "public", "py-a"):
            home2 = start("home2", chat + (["--relay", relay_addr] if scenario == "relay" else ["--bootstrap", relay_addr]))
            reserved, _ = home2.wait(event("listening", addr=circuit), 40)
            if not reserved:
                raise RuntimeError("home2 got no reservation")
            if scenario == "relay":
                start("home1", chat + ["--relay", relay_addr, "--connect", reserved["addr"]])
            elif scenario == "public":
                start("relay", ["lobby", "--json", "--ephemeral", "--no-mdns"] + chat[4:] + ["--connect", reserved["addr"]])
            else:
                start("home1", py + ["dcutr-dial", reserved["addr"]], python)
            connected, relayed_at = home2.wait(event("connected", addr=circuit), 30)
            if not connected:
                raise RuntimeError("no relayed connection")
            upgraded, direct_at = home2.wait(
                lambda e: e.get("event") == "connection_upgraded" or "hole punch" in e.get("message", ""), 40)
            if not upgraded or upgraded.get("event") != "connection_upgraded":
                raise RuntimeError(upgraded.get("message") if upgraded else "no outcome within 40 s")
            return (direct_at - relayed_at) * 1000, f"{upgraded.get('method')} to {upgraded['addr']} (attempt {upgraded.get('attempt', '-')})"
        if scenario == "bootstrap":
            started = time.monotonic()
            homes = [start(f"home{i}", chat + ["--bootstrap", relay_addr]) for i in (1, 2)]
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                for home in homes:
                    for at, e in list(home.lines):
                        if e.get("event") == "connection_upgraded":
                            return (at - started) * 1000, f"{e.get('method')} to {e['addr']} (attempt {e.get('attempt', '-')}), from start"
                time.sleep(0.05)
            raise RuntimeError("no direct connection within 90 s of start")
        if scenario == "py-b":
            pyhome = start("home2", py + ["dcutr-listen", relay_addr], python)
            reserved, _ = pyhome.wait(event("reserved"), 30)
            if not reserved:
                raise RuntimeError("py got no reservation")
            home1 = start("home1", chat + ["--connect", reserved["addr"]])
            connected, relayed_at = home1.wait(event("connected", addr=circuit), 30)
            if not connected:
                raise RuntimeError("no relayed connection")
            direct, direct_at = pyhome.wait(event("direct"), 60)
            if not direct:
                raise RuntimeError("py made no direct connection within 60 s")
            upgraded, _ = home1.wait(event("connection_upgraded"), 5)
            return (direct_at - relayed_at) * 1000, f"py direct; ours: {upgraded.get('addr') if upgraded else 'no event'}"
        raise SystemExit(f"unknown scenario {scenario}")
    finally:
        for node in nodes:
            node.stop()

times, failures = [], []
for run in range(runs):
    try:
        ms, how = one_run(run)
        times.append(ms)
        print(f"run {run + 1}: direct after {ms:.0f} ms: {how}", flush=True)
    except RuntimeError as why:
        failures.append((run, str(why)))
        print(f"run {run + 1}: FAILED {why}", flush=True)
relay.stop()

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")

print(f"\nscenario {scenario}, routers {firewall}: {len(times)}/{runs} direct ({100 * len(times) / runs:.0f}%)")
print(f"time to direct: p50 {pct(times, 50):.0f} ms, p99 {pct(times, 99):.0f} ms")
for run, why in failures:
    print(f"failure in run {run + 1}: {why}")
PY
