#!/bin/sh
# Fuzzes every decoder of network input with libFuzzer for SECONDS each (default 60).
#   Fuzz/run.sh [SECONDS] [TARGET...]
# Builds p2pfuzz with -sanitize=fuzzer,address in .build-fuzz (its own scratch
# path: the sanitizers rebuild every dependency), starts from the committed
# corpus (Fuzz/corpus/TARGET, never written to) and keeps what it finds in
# .build-fuzz/corpus/TARGET; crashes go to .build-fuzz/crashes/. Prints the runs
# and executions per target; exits 1 if any target crashed.
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-"varint multiaddr multistream yamux noise noise-transport tls-handshake tls-certificate dns keys envelope identify pubsub dht relay dcutr autonat file history quic-packet quic-frame quic-transport-parameters quic-connection"}
swift build --product p2pfuzz --scratch-path .build-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING >&2
binary="$(swift build --scratch-path .build-fuzz --show-bin-path)/p2pfuzz"
mkdir -p .build-fuzz/crashes
status=0
for target in $targets; do
    mkdir -p ".build-fuzz/corpus/$target"
    log=".build-fuzz/$target.log"
    if FUZZ_TARGET=$target "$binary" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 \
        -timeout=10 -artifact_prefix=".build-fuzz/crashes/$target-" -print_final_stats=1 \
        ".build-fuzz/corpus/$target" "Fuzz/corpus/$target" >"$log" 2>&1; then
        result=ok
    else
        result="CRASHED (see $log and .build-fuzz/crashes/)"
        status=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "$target: $result, $runs executions in $seconds s"
done
exit $status
