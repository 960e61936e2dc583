#!/usr/bin/env bash
# /perf/1.0.0 throughput across processes on loopback: Swift and py-libp2p 0.8.1
# as client and server in every pairing, in one run.
# py-libp2p runs as fast as its own API allows: its PerfService (served, and the
# client's) writes and reads PY_BLOCK_SIZE-byte blocks, 1 MiB unless set: the
# fastest of 4 KiB to 1 MiB in Benchmarks/py-perf-sweep.sh (py-libp2p's default,
# 64 KiB, moved about 3/4 as much py to py; 128 KiB to 1 MiB were within noise).
# Usage: Benchmarks/perf-compare.sh [MiB for Swift-only runs, default 256] [MiB for runs with py, default 32]
# Environment: P2PCHAT_BIN (a release p2pchat to use instead of building one),
# P2PCHAT_VENV (the py-libp2p venv, default .venv-interop, created if missing),
# PY_BLOCK_SIZE (bytes), P2PCHAT_MACHINE_PRINTED=1 (skip Benchmarks/machine.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
swift_mib=${1:-256}
py_mib=${2:-32}
py_block=${PY_BLOCK_SIZE:-1048576}
bin=${P2PCHAT_BIN:-}
if [ -z "$bin" ]; then
    swift build -c release --product p2pchat >/dev/null
    bin="$(swift build -c release --show-bin-path)/p2pchat"
fi
venv=${P2PCHAT_VENV:-.venv-interop}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r Tests/Interop/py/requirements.txt
    cp Tests/Interop/py/requirements.txt "$venv/requirements.installed"
fi
py="$venv/bin/python"
peer=Tests/Interop/py/peer.py
work=$(mktemp -d)
pids=()
cleanup() {
    exec 3>&- 2>/dev/null || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" perf-server --listen /ip4/127.0.0.1/tcp/0 >"$work/swift-server" 2>/dev/null &
pids+=($!)
# The py listener ends on stdin EOF (fd 3 closes when this script exits) or after its timeout.
mkfifo "$work/py-stdin"
"$py" "$peer" listen --timeout 600 --block-size "$py_block" <"$work/py-stdin" >"$work/py-server" 2>/dev/null &
pids+=($!)
exec 3>"$work/py-stdin"
for _ in $(seq 100); do
    grep -q "Listening on" "$work/swift-server" && grep -q listening "$work/py-server" && break
    sleep 0.1
done
swift_addr=$(sed -n 's/^Listening on //p' "$work/swift-server" | head -1)
py_addr=$("$py" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["addr"])' "$work/py-server")

mb_per_s() { "$py" -c 'import json,sys; d=json.loads(sys.stdin.readline()); print("%.1f" % (float(d[sys.argv[1]]) / 1e6))' "$1"; }
py_mb_per_s() { "$py" -c 'import json,sys
for line in sys.stdin:
    d = json.loads(line)
    if d.get("event") == "perf": print("%.1f" % (d["bytes_per_second"] / 1e6))'; }

row() { printf '%-44s %10s MB/s\n' "$1" "$2"; }
bytes() { echo $(($1 * 1024 * 1024)); }

[ "${P2PCHAT_MACHINE_PRINTED:-}" = 1 ] || Benchmarks/machine.sh
echo "perf (/perf/1.0.0) on loopback, separate processes; Swift-only runs move $swift_mib MiB, runs with py $py_mib MiB;"
echo "py-libp2p's PerfService writes $((py_block / 1024)) KiB blocks (PY_BLOCK_SIZE)"
row "Swift -> Swift upload" "$("$bin" perf "$swift_addr" --upload "$(bytes "$swift_mib")" --download 0 --json | mb_per_s upload_bytes_per_second)"
row "Swift -> Swift download" "$("$bin" perf "$swift_addr" --upload 0 --download "$(bytes "$swift_mib")" --json | mb_per_s download_bytes_per_second)"
row "Swift -> py-libp2p upload" "$("$bin" perf "$py_addr" --upload "$(bytes "$py_mib")" --download 0 --json | mb_per_s upload_bytes_per_second)"
row "Swift -> py-libp2p download" "$("$bin" perf "$py_addr" --upload 0 --download "$(bytes "$py_mib")" --json | mb_per_s download_bytes_per_second)"
row "py-libp2p -> Swift upload" "$("$py" "$peer" dial "$swift_addr" perf --upload "$(bytes "$py_mib")" --block-size "$py_block" --timeout 300 | py_mb_per_s)"
row "py-libp2p -> Swift download" "$("$py" "$peer" dial "$swift_addr" perf --download "$(bytes "$py_mib")" --block-size "$py_block" --timeout 300 | py_mb_per_s)"
row "py-libp2p -> py-libp2p upload" "$("$py" "$peer" dial "$py_addr" perf --upload "$(bytes "$py_mib")" --block-size "$py_block" --timeout 300 | py_mb_per_s)"
row "py-libp2p -> py-libp2p download" "$("$py" "$peer" dial "$py_addr" perf --download "$(bytes "$py_mib")" --block-size "$py_block" --timeout 300 | py_mb_per_s)"
