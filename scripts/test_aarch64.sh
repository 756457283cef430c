#!/usr/bin/env bash
# The CPU kernels' tests for ARM (aarch64), built on an x86 machine and run under emulation:
# the NEON kernels with the dot-product extension (qemu's default CPU has it), then without it
# (a Cortex-A53, baseline NEON), each against the same scalar reference as on x86.
#
#   bash scripts/test_aarch64.sh [TEST FILTER, default: kernels]
#
# Needs (Debian): gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; and
# `rustup target add aarch64-unknown-linux-gnu`. It installs nothing itself.
set -euo pipefail
cd "$(dirname "$0")/.."
FILTER=${1:-kernels}
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "test_aarch64.sh: $tool is missing (see the header)" >&2; exit 2; }
done
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
for cpu in max cortex-a53; do
  echo "== aarch64, qemu CPU $cpu"
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu" \
    cargo test --target aarch64-unknown-linux-gnu --bin owrun "$FILTER" -- --nocapture
done
