#!/usr/bin/env bash
# Prints the machine a benchmark ran on, to go beside its table: CPU model, cores,
# the crypto-relevant instruction sets (from /proc/cpuinfo flags) and OpenSSL's
# one-core AEAD speeds on 16 KiB blocks (`openssl speed -seconds 1 -bytes 16384`;
# OpenSSL divides by the process's CPU time, so a busy machine barely skews them).
# Usage: Benchmarks/machine.sh
set -uo pipefail
model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -1)
[ -n "$model" ] || model=$(uname -m)
flags=" $(sed -n 's/^flags[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -1) "
has() { case "$flags" in *" $1 "*) echo yes ;; *) echo no ;; esac; }
echo "machine: $model, $(nproc) cores ($(uname -m), $(uname -r))"
echo "  AES-NI $(has aes), AVX2 $(has avx2), AVX-512 $(has avx512f) (VAES $(has vaes), VPCLMULQDQ $(has vpclmulqdq))"
if command -v openssl >/dev/null; then
    speed() {
        # Machine-readable output: "+F:<n>:<name>:<bytes per second for each size>".
        openssl speed -seconds 1 -bytes 16384 -evp "$1" -mr 2>/dev/null |
            awk -F: '/^\+F:/ { printf "%.0f MB/s", $4 / 1e6; found = 1 } END { if (!found) printf "n/a" }'
    }
    echo "  $(openssl version | cut -d' ' -f1-2), one core, 16 KiB blocks:" \
        "chacha20-poly1305 $(speed chacha20-poly1305), aes-128-gcm $(speed aes-128-gcm)"
else
    echo "  openssl: not installed"
fi
