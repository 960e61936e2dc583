# Shared by the benchmark scripts: sourced after `set -euo pipefail` and the
# `cd` to the repository root. Nothing runs when sourced.

# A scratch directory ($work); the processes in `pids` and the namespaces in
# `namespaces` are killed and deleted at exit, with the scratch directory.
bench_init() {
    load_average before
    work=$(mktemp -d)
    pids=()
    namespaces=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    exec 3>&- 2>/dev/null || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
    load_average after
}

# Prints the load averages (1, 5 and 15 minutes) labelled $1 (before, after)
# and says when the one-minute one is over 1: the machine is shared, and a
# figure taken then is a loaded one, to be marked so in a table.
load_average() {
    local one five fifteen rest
    read -r one five fifteen rest </proc/loadavg
    if awk -v load="$one" 'BEGIN { exit !(load > 1) }'; then
        echo "load average $1: $one $five $fifteen (over 1: a busy machine, not a quiet figure)"
    else
        echo "load average $1: $one $five $fifteen"
    fi
}

# Waits (up to $3 tenths of a second, default 100) until file $1 matches the
# grep pattern $2; fails if it never does.
wait_for() {
    local file=$1 pattern=$2 tries=${3:-100}
    for _ in $(seq "$tries"); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# The address a p2pchat server printed ("Listening on ADDR") in file $1.
listening_address() { sed -n 's/^Listening on //p' "$1" | head -1; }

# Two network namespaces $1 and $2 joined by a veth pair (va$$ in $1 at
# $3.1/24, vb$$ in $2 at $3.2/24), each way shaped to rate $4 (tc tbf, a
# queue of at most 20 ms) unless $4 is "none". Needs root.
shaped_link() {
    local ns_a=$1 ns_b=$2 subnet=$3 rate=$4 ns
    namespaces+=("$ns_a" "$ns_b")
    ip netns add "$ns_a"
    ip netns add "$ns_b"
    ip link add "va$$" netns "$ns_a" type veth peer name "vb$$" netns "$ns_b"
    ip -n "$ns_a" addr add "$subnet.1/24" dev "va$$"
    ip -n "$ns_b" addr add "$subnet.2/24" dev "vb$$"
    for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
    ip -n "$ns_a" link set "va$$" up
    ip -n "$ns_b" link set "vb$$" up
    if [ "$rate" != "none" ]; then
        ip netns exec "$ns_a" tc qdisc add dev "va$$" root tbf rate "$rate" burst 32kbit latency 20ms
        ip netns exec "$ns_b" tc qdisc add dev "vb$$" root tbf rate "$rate" burst 32kbit latency 20ms
    fi
}

# The py-libp2p venv ($P2PCHAT_VENV, default .venv-interop): sets `py` (its
# python) and `peer` (the interop peer script). With $1 = create, a missing
# venv is created from Tests/Interop/py/requirements.txt; otherwise it fails.
py_venv() {
    local venv=${P2PCHAT_VENV:-.venv-interop}
    if [ ! -x "$venv/bin/python" ]; then
        if [ "${1:-}" != create ]; then
            echo "no python at $venv/bin/python (set P2PCHAT_VENV, or run Benchmarks/perf-compare.sh once to create it)" >&2
            return 1
        fi
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -r Tests/Interop/py/requirements.txt
        cp Tests/Interop/py/requirements.txt "$venv/requirements.installed"
    fi
    py="$venv/bin/python"
    peer=Tests/Interop/py/peer.py
}

# py listeners (`peer.py listen`) read their stdin from one fifo; each ends on
# its EOF, which comes when fd 3 closes (at exit), or after its timeout.
# Start them with py_listen, then call py_listeners_started.
py_listen() {  # $1: output file, $2: PerfService block size (bytes), $3: timeout (s)
    [ -p "$work/py-stdin" ] || mkfifo "$work/py-stdin"
    "$py" "$peer" listen --timeout "$3" --block-size "$2" <"$work/py-stdin" >"$1" 2>/dev/null &
    pids+=($!)
}
py_listeners_started() { exec 3>"$work/py-stdin"; }

# The address a py listener printed (its first line, JSON) in file $1.
py_listen_address() { "$py" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["addr"])' "$1"; }

# MB/s from `p2pchat perf --json` on stdin (field $1), and from py perf runs.
mb_per_s() { "$py" -c 'import json,sys; d=json.loads(sys.stdin.readline()); print("%.1f" % (float(d[sys.argv[1]]) / 1e6))' "$1"; }
py_mb_per_s() { "$py" -c 'import json,sys
for line in sys.stdin:
    d = json.loads(line)
    if d.get("event") == "perf": print("%.1f" % (d["bytes_per_second"] / 1e6))'; }

# Sets `bin` to a directory holding release builds of the products named in
# the arguments: $P2PCHAT_BIN_DIR if set (binaries built elsewhere), else this
# checkout's, built now.
release_products() {
    if [ -n "${P2PCHAT_BIN_DIR:-}" ]; then
        bin=$P2PCHAT_BIN_DIR
        return
    fi
    for product in "$@"; do swift build -c release --product "$product" >/dev/null; done
    bin="$(swift build -c release --show-bin-path)"
}
