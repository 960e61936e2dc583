#!/bin/sh
# Replays the committed corpus of every fuzz target through the decoders (no
# libFuzzer, seconds in all): the hook the test command can call. With
# FUZZ_SECONDS=N it also fuzzes each target for N seconds (Fuzz/run.sh).
set -eu
cd "$(dirname "$0")/.."
swift build --product p2pfuzz >&2
binary="$(swift build --show-bin-path)/p2pfuzz"
for corpus in Fuzz/corpus/*/; do
    "$binary" "$(basename "$corpus")" "$corpus"
done
if [ -n "${FUZZ_SECONDS:-}" ]; then
    Fuzz/run.sh "$FUZZ_SECONDS"
fi
