#!/usr/bin/env bash
# The whole test suite, from a clean clone: fetch the assets, build with optimisation, run every test.
# Tests run in release mode because candle in debug mode is far too slow for model tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh
export IDEATOR_ASSETS="${IDEATOR_ASSETS:-$PWD/assets}"
cargo build --release --locked --workspace --all-targets
cargo test --release --locked --workspace --no-fail-fast "$@"
