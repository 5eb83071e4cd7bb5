#!/usr/bin/env bash
# The whole test suite, from a clean clone: fetch the assets, build with optimisation, run every test.
# Tests run in release mode because candle in debug mode is far too slow for model tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh
# The report's browser test renders the HTML report in headless Chromium (Debian's `chromium`); install it once.
if [ -z "${IDEATOR_CHROMIUM:-}" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq chromium || { $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium; }
fi
export IDEATOR_ASSETS="${IDEATOR_ASSETS:-$PWD/assets}"
# Decode with the built-in kernel choice, not one this machine calibrated (`ideator bench calibrate`): the suite
# runs the same code on a developer's machine as in CI.
export IDEATOR_KERNEL_CACHE=off

# A one-node Slurm cluster for the Slurm backend's tests. CI (root on a fresh Debian machine) installs and starts it
# and requires it; elsewhere the tests say loudly that they did not run when no cluster is reachable.
if [ "${CI:-}" = "true" ]; then
  scripts/slurm-test-cluster.sh start
  export IDEATOR_REQUIRE_SLURM=1
elif [ "$(id -u)" = 0 ] && [ "${IDEATOR_SKIP_SLURM:-}" != 1 ]; then
  scripts/slurm-test-cluster.sh start || echo "WARNING: no Slurm test cluster; the Slurm tests will not run" >&2
fi

cargo build --release --locked --workspace --all-targets
status=0
cargo test --release --locked --workspace --no-fail-fast "$@" || status=$?

# The GPU code compiles and lints clean without a GPU (scripts/cuda-check.sh): always in CI (CI=true), skippable
# locally with IDEATOR_SKIP_CUDA_CHECK=1. It runs even after failed tests, so one CI log shows both.
if [ "${CI:-}" = "true" ] || [ "${IDEATOR_SKIP_CUDA_CHECK:-}" != 1 ]; then
  scripts/cuda-check.sh || status=$?
else
  echo "test.sh: IDEATOR_SKIP_CUDA_CHECK=1: the cuda feature was not compiled" >&2
fi
exit $status
