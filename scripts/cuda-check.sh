#!/usr/bin/env bash
# Compiles the `cuda` feature of the whole workspace (every target) and lints it, on any machine: no GPU and no
# driver needed. The CUDA compiler comes from PyPI wheels (scripts/cuda-toolchain.sh); candle-kernels' PTX is
# built with it. Uses `cargo clippy` (a `cargo check` plus lints; warnings are errors), or `cargo check` where
# clippy is not installed.
# It shares target/ with the CPU build: cargo keys artifacts by feature set, so neither build invalidates the
# other's.
# Usage: scripts/cuda-check.sh [extra cargo args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/cuda-toolchain.sh >/dev/null
# shellcheck source=/dev/null
. "${IDEATOR_CUDA_TOOLCHAIN:-$PWD/.cuda-toolchain}/env.sh"
echo "cuda-check: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP" >&2
start=$(date +%s)
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --release --locked --features cuda --workspace --all-targets "$@" -- -D warnings
else
  echo "cuda-check: cargo clippy is not installed; running cargo check (warnings are errors)" >&2
  RUSTFLAGS="${RUSTFLAGS:-} -D warnings" cargo check --release --locked --features cuda --workspace --all-targets "$@"
fi
echo "cuda-check: the cuda feature compiles with no warning ($(($(date +%s) - start)) s)" >&2
